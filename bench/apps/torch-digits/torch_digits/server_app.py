"""The ServerApp: FedAvg, the global model evaluated on the held-out split each round."""

from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from torch_digits.task import evaluate, get_weights, load_data, make_model, set_weights

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    model = make_model()
    _, (x_test, y_test) = load_data(0, 1)

    def global_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        set_weights(model, arrays.to_numpy_ndarrays())
        loss, accuracy = evaluate(model, x_test, y_test)
        return MetricRecord({"accuracy": accuracy, "loss": loss})

    strategy = FedAvg(fraction_train=float(context.run_config["fraction-train"]), fraction_evaluate=0.0)
    strategy.start(grid=grid, initial_arrays=ArrayRecord(get_weights(model)),
                   num_rounds=int(context.run_config["num-server-rounds"]), evaluate_fn=global_evaluate)
