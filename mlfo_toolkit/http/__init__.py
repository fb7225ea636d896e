"""The HTTP edge (FastAPI on uvicorn): the only package that imports FastAPI; routes call the core."""
