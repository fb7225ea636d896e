"""Helpers every layer of mlfo uses: processes, files, names, YAML with lines, signals, progress, Linux namespaces."""
