"""The HTTP API's paths, for the server (ingress), its client and the command's banner."""

IMAGES = "/v1/images/generations"  # OpenAI's images API
GENERATE = "/v1/generate"  # native: Pipeline.generate's arguments, seeds and timings back
MODELS = "/v1/models"
HEALTH = "/healthz"
