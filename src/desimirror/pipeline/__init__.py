"""The pipeline stages: crawl, find.json, plan, upload, verify (with its content proof),
publish, prune and status. A stage uses the state, integrity and storage layers, never
another stage's internals."""
