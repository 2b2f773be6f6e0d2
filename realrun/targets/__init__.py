"""Launch targets for real engines: a plan as SGLang or vLLM launch scripts, or Kubernetes manifests.

``layout`` (what a launch needs from a plan, placement on nodes), ``flags`` (per-version flag tables),
``sglang`` / ``vllm`` / ``k8s`` (the targets), ``scripts`` and ``bundle`` (the files written),
``execute`` (running an SGLang bundle on this host), ``standin`` and ``engine_exec`` (process shims).
"""
