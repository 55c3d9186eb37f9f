"""Fabric's benchmark suite: how fast the gateway is, as ratios against the best
a user could pick instead, each anchor measured in the same run.

`python -m benchmarks [--quick] [--scale N] [--only 1,2] [--repeat N]`; results go to
`benchmarks/results/latest.{json,md,png}`.
"""
