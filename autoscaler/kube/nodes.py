"""Which nodes are regular GPU capacity, which are virtual, and what GPU type a node has.

Pure functions over `NodeInfo`; no I/O. Caller: `kube.view` (free GPUs per GPU type on regular
nodes), and tests.

Virtual nodes (virtual-kubelet providers: SaladCloud, Alibaba ACS/ECI, Alaya VKS, Azure ACI) are
never free regular capacity: they advertise huge or notional allocatable GPUs, and whether a pod
starts there is the provider's business, which the placement stage models with a pending timeout,
not with a free count. A node is virtual when any of these holds:
- label `type=virtual-kubelet` (the virtual-kubelet library's `nodeutil.NewNode` gives it to every
  node it registers, with `kubernetes.io/role=agent`; Salad's and ACI's providers keep it);
- a label or a taint with key `virtual-kubelet.io/provider` (ACK: `...=alibabacloud:NoSchedule`;
  SaladCloud: `...=saladCloud:NoSchedule` by default, a taint only, never a label of that key);
- its name is `virtual-kubelet-<region>-<zone>` (ACK/ACS virtual nodes, which take no custom labels),
  or SaladCloud's default `saladcloud-edge-provider-<random>` (`saladcloud-node-<random>` in later
  releases), which still tells the node apart when its taint was switched off (`--disable-taint`);
- one of the ACS labels in `VIRTUAL_LABELS` (`alibabacloud.com/acs`, `alibabacloud.com/virtual-node`)
  or a label the operator adds. Not every `alibabacloud.com/*` label: regular ACK ECS nodes carry
  `alibabacloud.com/nodepool-id` and friends, and counting those as virtual would hide real GPUs.

GPU type of a node: the value of a configurable label, by default `nvidia.com/gpu.product` (set by
NVIDIA GPU feature discovery, e.g. `NVIDIA-A100-SXM4-80GB`), normalised to the short names policy
files use: an explicit mapping first (exact label value -> type), else drop the vendor words
(`NVIDIA`, `Tesla`, `GeForce`) and keep the model token, joining `RTX`/`GTX` to its number:
`NVIDIA-A100-SXM4-80GB` -> `A100`, `NVIDIA-H100-80GB-HBM3` -> `H100`, `Tesla-T4` -> `T4`,
`NVIDIA-GeForce-RTX-4090` -> `RTX4090`, `NVIDIA-L40S` -> `L40S`. A node without the label has no
known type and its GPUs count for no pool.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from autoscaler.engine.types import NodeClass
from autoscaler.kube.objects import NodeInfo

DEFAULT_GPU_TYPE_LABEL = "nvidia.com/gpu.product"
VIRTUAL_KUBELET_PROVIDER = "virtual-kubelet.io/provider"
VIRTUAL_LABELS: tuple[str, ...] = ("alibabacloud.com/acs", "alibabacloud.com/virtual-node")
_ACS_NODE_NAME = re.compile(r"^virtual-kubelet-[a-z0-9]+(-[a-z0-9]+)+$")
# SaladCloud's provider: node name prefix + random suffix, and the taint value it uses by default.
_SALAD_NODE_NAME = re.compile(r"^saladcloud-(edge-provider|node)-[a-z0-9]+$")
SALAD_PROVIDER = "saladCloud"
_VENDOR_WORDS = {"NVIDIA", "TESLA", "GEFORCE", "QUADRO"}


def normalise_gpu_type(product: str, mapping: Mapping[str, str] | None = None) -> str:
    """A GPU product label value -> the short GPU type used in policy files (see module doc)."""
    if mapping and product in mapping:
        return mapping[product]
    tokens = [t for t in re.split(r"[-_\s]+", product.strip()) if t and t.upper() not in _VENDOR_WORDS]
    if not tokens:
        return product
    head = tokens[0].upper()
    if head in ("RTX", "GTX") and len(tokens) > 1:
        return head + tokens[1].upper()
    return head


@dataclass(frozen=True, slots=True)
class NodeClassifier:
    gpu_type_label: str = DEFAULT_GPU_TYPE_LABEL
    # Exact label value -> GPU type, for products the rule above names wrongly.
    gpu_type_mapping: Mapping[str, str] = field(default_factory=dict)
    virtual_labels: tuple[str, ...] = VIRTUAL_LABELS

    def node_class(self, node: NodeInfo) -> NodeClass:
        return NodeClass.VIRTUAL if self.is_virtual(node) else NodeClass.REGULAR

    def is_virtual(self, node: NodeInfo) -> bool:
        labels = node.labels
        if labels.get("type") == "virtual-kubelet" or VIRTUAL_KUBELET_PROVIDER in labels:
            return True
        if any(t.key == VIRTUAL_KUBELET_PROVIDER for t in node.taints):
            return True
        if any(key in labels and labels[key].lower() != "false" for key in self.virtual_labels):
            return True
        return bool(_ACS_NODE_NAME.match(node.name) or _SALAD_NODE_NAME.match(node.name))

    def provider(self, node: NodeInfo) -> str | None:
        """The virtual-kubelet provider a virtual node names (label, else taint value), if any."""
        if not self.is_virtual(node):
            return None
        if node.labels.get(VIRTUAL_KUBELET_PROVIDER):
            return node.labels[VIRTUAL_KUBELET_PROVIDER]
        for taint in node.taints:
            if taint.key == VIRTUAL_KUBELET_PROVIDER and taint.value:
                return taint.value
        if _ACS_NODE_NAME.match(node.name) or any(k in node.labels for k in self.virtual_labels):
            return "alibabacloud"
        if _SALAD_NODE_NAME.match(node.name):
            return SALAD_PROVIDER
        return None

    def gpu_type(self, node: NodeInfo) -> str | None:
        product = node.labels.get(self.gpu_type_label)
        if not product:
            return None
        return normalise_gpu_type(product, self.gpu_type_mapping)

    def schedulable(self, node: NodeInfo) -> bool:
        """Can take new pods: Ready and not cordoned. A cordoned or NotReady node's free GPUs are
        not capacity a scale-up can use."""
        return node.ready and not node.unschedulable
