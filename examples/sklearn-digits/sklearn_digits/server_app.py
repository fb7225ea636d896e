"""The ServerApp: FedAvg over the clients, the global model evaluated on the held-out split each round."""

from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from sklearn.metrics import log_loss

from sklearn_digits.task import get_model, load_data, set_initial_params, set_model_params

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    model = get_model(str(cfg["penalty"]), int(cfg["local-epochs"]))
    set_initial_params(model)
    _, _, x_test, y_test = load_data(0, 1, int(cfg["data-seed"]))

    def global_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        set_model_params(model, arrays.to_numpy_ndarrays())
        loss = float(log_loss(y_test, model.predict_proba(x_test), labels=list(range(10))))
        return MetricRecord({"accuracy": float(model.score(x_test, y_test)), "loss": loss})

    strategy = FedAvg(fraction_train=float(cfg["fraction-train"]), fraction_evaluate=0.0)
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord([model.coef_, model.intercept_]),
        num_rounds=int(cfg["num-server-rounds"]),
        evaluate_fn=global_evaluate,
    )
    print("final accuracy:", result.evaluate_metrics_serverapp.get(max(result.evaluate_metrics_serverapp, default=0)))
