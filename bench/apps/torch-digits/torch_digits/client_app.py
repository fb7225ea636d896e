"""The ClientApp: a few epochs of SGD on this node's partition."""

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from torch_digits.task import get_weights, load_data, make_model, set_weights

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    (x, y), _ = load_data(int(context.node_config["partition-id"]), int(context.node_config["num-partitions"]))
    model = make_model()
    set_weights(model, msg.content["arrays"].to_numpy_ndarrays())
    optimiser = torch.optim.SGD(model.parameters(), lr=float(context.run_config["lr"]))
    for _ in range(int(context.run_config["local-epochs"])):
        for start in range(0, len(y), 32):
            optimiser.zero_grad()
            loss = nn.functional.cross_entropy(model(x[start:start + 32]), y[start:start + 32])
            loss.backward()
            optimiser.step()
    metrics = MetricRecord({"train_loss": float(loss), "num-examples": len(y)})
    return Message(content=RecordDict({"arrays": ArrayRecord(get_weights(model)), "metrics": metrics}), reply_to=msg)
