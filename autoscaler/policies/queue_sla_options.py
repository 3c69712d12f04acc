"""The options of `queue-sla` (`policies.queue_sla`, where the policy and its docs are): a pydantic
model, kept in a module of its own because the image compiles the policy with mypyc (setup.py) and
pydantic models do not compile."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

# The spare capacity, as a fraction of the need, of a workload whose requests in service cannot be
# counted (no concurrencyPerReplica) and that gives no headroom.
DEFAULT_HEADROOM = 0.1


class QueueSlaOptions(BaseModel):
    # Finite numbers only, each bounded (issue 10): a policy file must not reach the arithmetic with
    # inf, nan or a value that overflows it.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)

    max_wait_seconds: float = Field(
        30.0, ge=0.01, le=86_400, alias="maxWaitSeconds", description="0.01 s to a day"
    )
    backlog_trigger: str = Field(
        "backlog", alias="backlogTrigger", description="trigger reading queue length"
    )
    rate_trigger: str | None = Field(
        None, alias="rateTrigger", description="trigger reading the arrival rate (messages/s)"
    )
    service_rate_per_replica: float | None = Field(
        None,
        ge=1e-6,
        le=1e6,
        alias="serviceRatePerReplica",
        description="requests/s one replica unit completes (profiled), 1e-6 to 1e6; with "
        "deliveryTrigger only the first guess, until the rate is learned",
    )
    delivery_trigger: str | None = Field(
        None,
        alias="deliveryTrigger",
        description="a RabbitMQ DeliverGetRate trigger: the service rate is learned from it",
    )
    in_flight_trigger: str | None = Field(
        None,
        alias="inFlightTrigger",
        description="a RabbitMQ http QueueLength trigger (waiting + in service): with deliveryTrigger "
        "and concurrencyPerReplica, the service time is learned at any load (Little's law)",
    )
    concurrency_per_replica: float | None = Field(
        None,
        ge=1,
        le=100_000,
        alias="concurrencyPerReplica",
        description="requests one replica (pod) serves at once (vLLM max-num-seqs, prefetch), 1 to 1e5",
    )
    # None: not given. The spare capacity is then square-root staffing where requests in service
    # can be counted, else DEFAULT_HEADROOM (`staffing`, `spare_share`). Decided from the values, not
    # from which fields a document set, so a dump and reload (the simulator's presets) keeps it.
    headroom: float | None = Field(
        None,
        ge=0,
        le=5,
        description="extra capacity as a fraction of the need (10 % without concurrencyPerReplica), "
        "instead of square-root staffing",
    )
    # Square-root staffing (Halfin and Whitt, 1981): with R requests in service on average, the
    # number in service under Poisson arrivals has a standard deviation of sqrt(R), so c = R +
    # beta * sqrt(R) servers keep the chance of waiting at all fixed as R grows (beta 1: one
    # standard deviation, a probability of waiting of about 0.22; beta 0.5: about 0.5). The spare
    # capacity then shrinks relative to the load as it grows, where a fixed headroom keeps it at 10 %.
    # Unset, it is 1 when concurrencyPerReplica is given and headroom is not (`staffing`): a default
    # since issue 10's burst order (measured in benchmarks/results/queue_sla_variants.md).
    staffing_beta: float | None = Field(
        None,
        ge=0,
        le=10,
        alias="staffingBeta",
        description="square-root staffing instead of headroom: beta * sqrt(requests in service) "
        "spare slots, 0 to 10; needs concurrencyPerReplica; 1 by default when it is given",
    )
    # A trend counted at face value turns the noise of a steady stream into a climb (and, held, into
    # capacity). With k, only the part of a rising trend beyond k standard errors of a slope fitted
    # to the rate readings over the trend's window counts (k 2: about 98 % one-sided confidence
    # that the rate climbs at all).
    # 2 by default; null counts the trend at face value (before issue 10's burst order, the default).
    trend_significance: float | None = Field(
        2.0,
        ge=0,
        le=10,
        alias="trendSignificance",
        description="count the trend only beyond this many standard errors of the slope, 0 to 10",
    )
    # What it orders and why: the module docstring of `policies.queue_sla`.
    burst_order: bool = Field(
        True,
        alias="burstOrder",
        description="while the queue outruns the ready replicas, order for it at the instant rate",
    )
    # What it changes and why: the module docstring of `policies.queue_sla`.
    spill_on_trend: bool = Field(
        False,
        alias="spillOnTrend",
        description="let a forecast climb order replicas on a pool slower to start than the first",
    )
    lookahead: bool = Field(True, description="size for the rate and queue one startup time ahead")
    lookahead_seconds: float = Field(
        120.0,
        ge=0,
        le=86_400,
        alias="lookaheadSeconds",
        description="longest look-ahead, whatever the startup time; at most a day",
    )
    # At most a day: the hold memory keeps at most one entry per 5 s bucket of it (540 at 2700 s,
    # and one per step down of the need in practice). With holdDecay (the default) a need counts
    # whole for the first pool's p95 startup, then less and less, until it is dropped at
    # holdSeconds. 2700 s is a measured choice, not one derived from the SLA or the startup: with
    # the defaults around it, 1800, 2700 and 3600 s were measured on the benchmark's traces (1800 s
    # lost 1.4 points of the SLA on the code trace, 3600 s added GPU-hours to both);
    # see benchmarks/results/queue_sla_variants.md.
    hold_seconds: float = Field(
        2700.0,
        ge=0,
        le=86_400,
        alias="holdSeconds",
        description="keep the highest need this long before scaling in; at most a day",
    )

    # A flat 600 s hold kept a burst-sized fleet for ten minutes after every burst of a bursty
    # stream. A need is kept whole as long as it would take to get its capacity back (the first
    # pool's p95 startup: releasing it sooner risks waiting a whole startup for it), then the
    # capacity held for it shrinks linearly to nothing at holdSeconds: the older a burst, the less
    # it says about the next one. False: the flat hold of earlier versions.
    hold_decay: bool = Field(
        True,
        alias="holdDecay",
        description="after the first pool's p95 startup, a held need decays linearly to 0 at holdSeconds",
    )

    @model_validator(mode="after")
    def _knows_a_service_rate(self) -> QueueSlaOptions:
        if (self.in_flight_trigger is None) != (self.concurrency_per_replica is None) or (
            self.in_flight_trigger is not None and self.delivery_trigger is None
        ):
            raise ValueError(
                "inFlightTrigger and concurrencyPerReplica go together, with deliveryTrigger: the "
                "service time is in-service requests / deliveries per second"
            )
        if self.staffing_beta is not None and (
            self.concurrency_per_replica is None or self.headroom is not None
        ):
            raise ValueError(
                "staffingBeta replaces headroom (give one of them) and counts requests in service: "
                "it needs concurrencyPerReplica"
            )
        if self.service_rate_per_replica is None and self.delivery_trigger is None:
            raise ValueError(
                "give serviceRatePerReplica (requests/s one replica completes, from profiling) or "
                "deliveryTrigger (a DeliverGetRate trigger to learn it from), or both"
            )
        return self

    def staffing(self) -> float | None:
        """The square-root staffing beta in force: the one given, else 1 when requests in service can
        be counted (concurrencyPerReplica) and no headroom is given; None: a fixed headroom
        (`spare_share`)."""
        if self.staffing_beta is not None:
            return self.staffing_beta
        if self.concurrency_per_replica is None or self.headroom is not None:
            return None
        return 1.0

    def spare_share(self) -> float:
        """The fixed headroom, a fraction of the need, where no square-root staffing is in force."""
        return self.headroom if self.headroom is not None else DEFAULT_HEADROOM
