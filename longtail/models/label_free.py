"""Networks of the label-free methods: SimCLR's projection network (``longtail.methods.simclr``) and P²OT /
SP²OT's clustering network with its logits bank and semantic graph (``longtail.methods.p2ot``).

Both put a head on a backbone from ``longtail.models.backbones.build_backbone`` (a registry model without its
head, or a timm model). The bank and the graph are buffers, so checkpoints carry them and resume is exact.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longtail.errors import LongtailError
from longtail.models.base import SingleHeadNetwork
from longtail.models.heads import CosineHead


class ContrastiveNetwork(SingleHeadNetwork):
    """Backbone features ``h`` -> projection MLP ``z = W2 ReLU(W1 h)``; the projection head is the model's head."""

    def __init__(self, backbone: nn.Module, num_features: int, hidden_dim: int, projection_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(
            nn.Linear(num_features, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, projection_dim)
        )

    def forward_features(self, images: Tensor) -> Tensor:
        return self.backbone.forward_features(images)


class LogitsBank(nn.Module):
    """FIFO of the detached logits and dataset indices of the last pushed rows (``capacity`` rows), kept in
    buffers so that checkpoints carry it."""

    def __init__(self, capacity: int, num_clusters: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.register_buffer("logits", torch.zeros(capacity, num_clusters))
        self.register_buffer("indices", torch.full((capacity,), -1, dtype=torch.int64))
        self.register_buffer("filled", torch.zeros((), dtype=torch.int64))
        self.register_buffer("position", torch.zeros((), dtype=torch.int64))

    def contents(self) -> tuple[Tensor, Tensor]:
        """The stored logits (R, K) and indices (R,), oldest first."""
        filled, position = int(self.filled), int(self.position)
        if filled < self.capacity:
            return self.logits[:filled], self.indices[:filled]
        return self.logits.roll(-position, dims=0), self.indices.roll(-position, dims=0)

    @torch.no_grad()
    def push(self, logits: Tensor, indices: Tensor) -> None:
        """Append rows, dropping the oldest beyond ``capacity``."""
        if self.capacity == 0:
            return
        logits, indices = logits[-self.capacity:], indices[-self.capacity:]
        slots = (int(self.position) + torch.arange(logits.shape[0], device=self.logits.device)) % self.capacity
        self.logits.index_copy_(0, slots, logits.detach().to(self.logits.dtype))
        self.indices.index_copy_(0, slots, indices.to(self.indices.device))
        self.position.fill_((int(self.position) + logits.shape[0]) % self.capacity)
        self.filled.fill_(min(int(self.filled) + logits.shape[0], self.capacity))


class SemanticGraph(nn.Module):
    """The k-NN Gaussian graph of the training set (each row's ``k`` neighbours and weights), in buffers."""

    def __init__(self, num_rows: int, k: int) -> None:
        super().__init__()
        self.register_buffer("neighbours", torch.zeros(num_rows, k, dtype=torch.int64))
        self.register_buffer("weights", torch.zeros(num_rows, k))
        self.register_buffer("ready", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def store(self, graph: scipy.sparse.csr_matrix) -> None:
        rows, k = self.neighbours.shape
        if graph.shape != (rows, rows) or graph.nnz != rows * k:
            raise LongtailError(f"Expected a ({rows}, {rows}) graph with {k} neighbours a row; got {graph.shape}, "
                                f"{graph.nnz} entries.")
        self.neighbours.copy_(torch.from_numpy(graph.indices.reshape(rows, k).astype(np.int64)))
        self.weights.copy_(torch.from_numpy(graph.data.reshape(rows, k)))
        self.ready.fill_(True)

    def to_scipy(self) -> scipy.sparse.csr_matrix:
        rows, k = self.neighbours.shape
        indptr = np.arange(0, rows * k + 1, k)
        return scipy.sparse.csr_matrix(
            (self.weights.cpu().double().numpy().ravel(), self.neighbours.cpu().numpy().ravel(), indptr),
            shape=(rows, rows),
        )


class ClusteringNetwork(SingleHeadNetwork):
    """Backbone features -> cosine head with K outputs; ``memory`` (the logits bank) and ``graph`` (SP²OT)."""

    def __init__(self, backbone: nn.Module, num_features: int, num_clusters: int, logit_scale: float,
                 bank_rows: int, input_size: int | None = None, graph_rows: int = 0, graph_k: int = 0) -> None:
        super().__init__()
        self.backbone = backbone
        self.input_size = input_size
        self.head = CosineHead(num_features, num_clusters, scale=logit_scale)
        self.memory = LogitsBank(bank_rows, num_clusters)
        self.graph = SemanticGraph(graph_rows, graph_k) if graph_rows else None

    def forward_features(self, images: Tensor) -> Tensor:
        if self.input_size is not None and images.shape[-1] != self.input_size:
            images = F.interpolate(images, size=self.input_size, mode="bicubic", align_corners=False)
        return self.backbone.forward_features(images)

    def last_block(self) -> nn.Module:
        """The backbone's last transformer block or last residual block."""
        blocks = getattr(getattr(self.backbone, "model", None), "blocks", None)
        if isinstance(blocks, nn.Sequential) and len(blocks):
            return blocks[-1]
        stages = [module for name, module in self.backbone.named_modules()
                  if name.rsplit(".", 1)[-1] in ("layer1", "layer2", "layer3", "layer4")
                  and isinstance(module, nn.Sequential)]
        if not stages:
            raise LongtailError(
                f"Cannot find the last block of a {type(self.backbone).__name__} backbone (no ViT 'blocks' and no "
                "ResNet 'layerN' stages); use method.args.trainable=all or head."
            )
        return stages[-1][-1]
