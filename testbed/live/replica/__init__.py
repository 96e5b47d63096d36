"""The replica side of the live plane: the HTTP server (:mod:`.server`) in front of a micro-batching
engine (:mod:`.engine`) over a real PyTorch model (:mod:`.runner`, :mod:`.models`) or vLLM
(:mod:`.vllm`), with in-process chaos (:mod:`.chaos`) and Prometheus metrics (:mod:`.metrics`)."""
