"""Local, protocol-faithful stand-ins for ModelScope, OSS, Kubernetes and a serving engine.

Only tests, benchmarks and the demo import this package; product code never does.
"""
