"""Expert parallelism: the E experts of every MoE layer split over an expert-parallel (EP) group.

Rank j of the EP group holds experts [j*E/ep, (j+1)*E/ep) as stacked weights (GroupedExperts with E/ep
experts); the router stays replicated. Dropless dispatch (OLMoE): every (token, slot) assignment reaches
its expert.
  1. route locally and sort the assignments by global expert (as the single-process MoE does),
  2. exchange per-expert counts (all_gather of E integers per rank: the split sizes),
  3. ONE all_to_all_single of the token vectors to the experts' owners (unequal splits, zero allowed),
  4. regroup the received rows (source-major) expert-major, run the local experts,
  5. ONE all_to_all_single back, apply the gates, scatter-add into the token outputs.
The auxiliary losses and counts are computed on the rank's own tokens over all E experts, exactly what the
single-process layer computes on the same tokens.

Why our own dispatcher: megatron-core 0.16's MoELayer and token dispatchers hard-code torch.cuda (they do not
run on CPU without patching it, and without Transformer Engine its router hits a `te_general_gemm` NameError),
and DeepSpeed's MoE layer has capacity-based (dropping) gating; OLMoE is dropless.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from pipeline.model.moe import GroupedExperts, MoE, RouterStats, load_balancing_loss, router_z_loss
from pipeline.parallel.precision import matmul_dtype
from pipeline.parallel.shard_info import mark_sharded


class _AllToAll(torch.autograd.Function):
    """all_to_all_single with unequal splits; the backward is the reverse exchange."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, out_splits: list[int], in_splits: list[int], group) -> torch.Tensor:
        ctx.meta = (out_splits, in_splits, group)
        out = x.new_empty((sum(out_splits), *x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out_splits, in_splits, group = ctx.meta
        back = grad.new_empty((sum(in_splits), *grad.shape[1:]))
        dist.all_to_all_single(back, grad.contiguous(), in_splits, out_splits, group=group)
        return back, None, None, None


def all_to_all(x: torch.Tensor, out_splits: list[int], in_splits: list[int], group) -> torch.Tensor:
    return _AllToAll.apply(x, out_splits, in_splits, group)


class ExpertParallelMoE(MoE):
    """Drop-in replacement of a built MoE layer holding only this rank's experts (same parameter names)."""

    def __init__(self, dense: MoE, ep_group: dist.ProcessGroup):
        nn.Module.__init__(self)
        self.n_experts, self.top_k = dense.n_experts, dense.top_k
        self.ep_group = ep_group
        self.ep = dist.get_world_size(ep_group)
        self.ep_rank = dist.get_rank(ep_group)
        if self.n_experts % self.ep:
            raise ValueError(f"parallel.ep: {self.ep} does not divide n_experts {self.n_experts}")
        self.local_experts = self.n_experts // self.ep
        self.router = dense.router
        first = self.ep_rank * self.local_experts
        w = dense.experts
        hidden, d_model = w.w_gate.shape[1], w.w_gate.shape[2]
        with torch.device("meta"):
            self.experts = GroupedExperts(self.local_experts, d_model, hidden)
        for name in ("w_gate", "w_up", "w_down"):
            full = getattr(w, name)
            local = nn.Parameter(full.detach()[first:first + self.local_experts].clone())
            local._moe_expert = True
            mark_sharded(local, 0, first, first + self.local_experts, self.n_experts)
            setattr(self.experts, name, local)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, RouterStats]:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        logits, probs, gates, experts = self.route(x)
        flat_experts = experts.reshape(-1)
        order = flat_experts.argsort(stable=True)
        token_idx = order // self.top_k
        counts = torch.bincount(flat_experts, minlength=self.n_experts)      # my tokens, every expert

        ep, n_local = self.ep, self.local_experts
        all_counts = torch.empty(ep * self.n_experts, dtype=counts.dtype, device=counts.device)
        dist.all_gather_into_tensor(all_counts, counts, group=self.ep_group)
        # recv[s, e]: rows rank s sends to my local expert e
        recv = all_counts.view(ep, ep, n_local)[:, self.ep_rank, :]
        send_splits = counts.view(ep, n_local).sum(dim=1).tolist()
        recv_splits = recv.sum(dim=1).tolist()

        # the experts' matmuls consume x in matmul_dtype: sending it in that dtype changes no value
        x_send = x[token_idx].to(matmul_dtype(x))
        x_recv = all_to_all(x_send, recv_splits, send_splits, self.ep_group)       # source-major
        # regroup expert-major: segment (s, e) -> key e*ep + s, stable sort keeps each source's order
        seg_key = (torch.arange(n_local, device=x.device).view(1, -1) * ep
                   + torch.arange(ep, device=x.device).view(-1, 1))
        row_key = torch.repeat_interleave(seg_key.reshape(-1), recv.reshape(-1))
        perm = row_key.argsort(stable=True)
        y_local = self.experts(x_recv[perm], recv.sum(dim=0))
        y_recv = torch.empty_like(y_local).index_copy(0, perm, y_local)             # back to source-major
        y = all_to_all(y_recv, send_splits, recv_splits, self.ep_group)

        # the k expert outputs of a token are combined in the input's dtype (fp32 under autocast)
        y = y.to(x.dtype) * gates.reshape(-1)[order].unsqueeze(-1).to(x.dtype)
        out = torch.zeros_like(x).index_add_(0, token_idx, y)
        stats = RouterStats(lb=load_balancing_loss(probs, counts, self.top_k), z=router_z_loss(logits),
                            counts=counts.detach())
        return out.reshape(shape), stats
