"""Frugal: reach the target with as little client compute as the pace allows."""

from mlfo_toolkit.orchestrator.assurance import Action, DefaultPolicy


class Frugal:
    def __init__(self, settings):
        self.default = DefaultPolicy()  # mlfo's rules: lost clients, deadlines, met and missed
        self.floor = settings.min_fraction_fit

    def decide(self, observation):
        actions = self.default.decide(observation)
        if any(a.kind == "stop" for a in actions):
            return actions
        state = observation.assessment.state if observation.assessment else None
        if state == "on_track" and observation.fraction_fit > self.floor:
            smaller = max(self.floor, round(observation.fraction_fit / 2, 3))
            actions.append(Action("set_fraction_fit", value=smaller, reason="on track: fewer clients do", rule="frugal"))
        elif state == "at_risk" and observation.fraction_fit < 1:
            actions.append(Action("set_fraction_fit", value=1.0, reason="at risk: every client trains", rule="frugal"))
        return actions
