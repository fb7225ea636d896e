"""The MLFOs: campus (intents -> FL clients) and cloud (Mo-Mo -> FL servers), their store, intents and cohort files."""
