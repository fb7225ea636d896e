"""The ClientApp: train the global model on this node's partition; evaluate it on the held-out split."""

import warnings

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from sklearn.metrics import log_loss

from sklearn_digits.task import get_model, load_data, set_initial_params, set_model_params

app = ClientApp()


def _model_and_data(msg: Message, context: Context):
    cfg = context.run_config
    x_train, y_train, x_test, y_test = load_data(
        int(context.node_config["partition-id"]), int(context.node_config["num-partitions"]), int(cfg["data-seed"])
    )
    model = get_model(str(cfg["penalty"]), int(cfg["local-epochs"]))
    set_initial_params(model)
    set_model_params(model, msg.content["arrays"].to_numpy_ndarrays())
    return model, x_train, y_train, x_test, y_test


@app.train()
def train(msg: Message, context: Context) -> Message:
    model, x_train, y_train, _, _ = _model_and_data(msg, context)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs stops at max_iter on purpose: a few local epochs
        model.fit(x_train, y_train)
    metrics = {
        "train_logloss": float(log_loss(y_train, model.predict_proba(x_train), labels=list(range(10)))),
        "num-examples": len(x_train),
    }
    content = RecordDict({"arrays": ArrayRecord([model.coef_, model.intercept_]), "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    model, _, _, x_test, y_test = _model_and_data(msg, context)
    metrics = {
        "eval_loss": float(log_loss(y_test, model.predict_proba(x_test), labels=list(range(10)))),
        "eval_acc": float(model.score(x_test, y_test)),
        "num-examples": len(x_test),
    }
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
