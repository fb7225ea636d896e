"""The node agent: starts Flower SuperLinks and SuperNodes on its host when an MLFO asks."""
