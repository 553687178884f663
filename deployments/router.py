"""Prefix-affinity routing across a model's replicas: a Ray Serve request router (in each caller of the model's
deployment: the routing ingress).

A call goes to the replica that served its prompt's start (or its session) last, whose engine then prefills only
what is new; when that replica has every slot busy and another has fewer requests, the least loaded takes it.
The keys and the choice are Ray-free (kronk/serving/affinity.py); this class feeds them Serve's view: the
running replicas and the ongoing requests per replica that Serve's router tracks for each replica it sends to
(``replica_queue_len_cache``). A call without keys (embeddings, tokenize, the ingress's own ``info`` calls)
gets Serve's default, the power of two choices.

Not ``FIFOMixin``: with it, a replica found for one request may be handed to an older one waiting, which would
send a conversation's turn to a replica chosen for another conversation.
"""

from __future__ import annotations

import logging
import random
from collections import OrderedDict
from typing import Any

from ray.serve.request_router import LocalityMixin, PendingRequest, ReplicaID, RequestRouter, RunningReplica

from kronk.serving.affinity import MAX_KEYS, NO_KEYS, AffinityTable, RoutingKeys, routing_keys

log = logging.getLogger("ray.serve")

# Calls whose keys are kept between choosing a replica and hearing it accepted the call (on_request_routed).
MAX_PENDING = 10_000


class PrefixAffinityRouter(LocalityMixin, RequestRouter):
    """Serve's ``request_router_class`` for a model deployment with ``prefix_routing`` (deployments/llm.py).

    ``request_router_kwargs``: ``busy_at`` (the requests at which a replica counts as busy: the model's
    ``parallel``) and ``max_keys`` (the affinity table's size)."""

    def initialize_state(self, busy_at: int = 1, max_keys: int = MAX_KEYS, **_: Any) -> None:
        self.table: AffinityTable[ReplicaID] = AffinityTable(busy_at=busy_at, max_keys=max_keys)
        self._keys: OrderedDict[str, RoutingKeys] = OrderedDict()  # internal request id -> its keys

    def _table(self) -> AffinityTable[ReplicaID]:
        if not hasattr(self, "table"):  # initialize_state not called (no kwargs given)
            self.initialize_state()
        return self.table

    def _keys_of(self, pending: PendingRequest | None) -> RoutingKeys:
        if pending is None:
            return NO_KEYS
        rid = pending.metadata.internal_request_id
        keys = self._keys.get(rid)
        if keys is None:  # once per call (a retried choice reuses them)
            keys = routing_keys(pending.args[0]) if pending.args else NO_KEYS
            self._keys[rid] = keys
            while len(self._keys) > MAX_PENDING:  # calls cancelled before any replica took them
                self._keys.popitem(last=False)
        return keys

    def _queue_len(self, rid: ReplicaID) -> int | None:
        return self.replica_queue_len_cache.get(rid)

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        table = self._table()
        keys = self._keys_of(pending_request)
        if not keys:
            return self._power_of_two(pending_request)
        by_id = {r.replica_id: r for r in candidate_replicas}
        ranks = table.choose(keys, list(by_id), self._queue_len)
        if pending_request is not None:  # every replica was tried: Serve backs off before trying again
            pending_request.routing_context.should_backoff = True
        return [[by_id[rid] for rid in rank] for rank in ranks]

    def _power_of_two(self, pending_request: PendingRequest | None) -> list[list[RunningReplica]]:
        """Serve's default (PowerOfTwoChoicesRequestRouter): two random replicas, the nearer ones first; Serve takes
        the less loaded of them."""
        ids = list(self.apply_locality_routing(pending_request))
        if not ids:
            return []
        chosen = random.sample(ids, min(2, len(ids)))
        return [[self._replicas[i] for i in chosen if i in self._replicas]]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any) -> None:
        keys = self._keys.pop(pending_request.metadata.internal_request_id, None)
        if keys:
            self._table().record(keys, replica_id)

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        before = set(self._replica_id_set)
        super().update_replicas(replicas)
        if self._replica_id_set != before:  # a replica that went away takes its keys with it
            dropped = self._table().forget(self._replica_id_set)
            if dropped:
                log.info("prefix routing: forgot %d keys of replicas that are gone", dropped)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self._table().forget(self._replica_id_set)
