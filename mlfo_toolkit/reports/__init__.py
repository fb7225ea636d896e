"""Run folders (run.json, the manifest) and the reports drawn from them: one run, or an experiment's runs side by side."""
