"""A real local Kubernetes control plane with simulated (kwok) GPU nodes.

Used by the test-suite and by ``make demo``: etcd, kube-apiserver, kube-controller-manager and
kube-scheduler are the upstream binaries (built from Go modules by :mod:`.binaries`); only the
data plane -- nodes, containers, GPUs -- is simulated by kwok.
"""
