"""Serving on a cluster: the runtime behind Ray Serve, with an OpenAI-compatible images API.

One ingress deployment (FastAPI) parses HTTP and answers in OpenAI's shapes; one deployment per bundle runs
the runtime in replicas that Ray Serve places on every node and autoscales. Each replica runs one
``SamplingEngine`` that batches its concurrent requests step by step; every call into the runtime goes
through ``runner.py``. ``client.py`` is the torch-free HTTP client (the demo's ``--server`` side). docs/serving.md
has the commands for one machine, a cluster and Kubernetes.
"""
