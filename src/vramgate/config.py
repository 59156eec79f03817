"""The configuration file: pydantic models of the YAML, loading, VRAMGATE_* overrides, clear errors.

Every error names the file, the key path (`models.gemma.ttl`) and what was expected.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from vramgate.containers import Container, RuntimeKind
from vramgate.filenames import file_stem

Task = Literal["generate", "embed", "rerank"]
ENV_PREFIX = "VRAMGATE_"
# The one bound of every duration (a client's keep_alive and ad-hoc ttl, the file's ttl): a
# century outlasts any gateway; past it is forever, and nothing infinite is ever stored (an
# expiry computed from 1e308 seconds broke /api/ps for everyone).
MAX_DURATION_S = 100 * 365 * 86400.0
Seconds = Annotated[float, Field(allow_inf_nan=False, le=MAX_DURATION_S)]


class ConfigError(Exception):
    """A configuration that cannot be used; the message is meant for the operator as it is."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Defaults(_Strict):
    ttl: Seconds = Field(default=1800, ge=0, description="Idle seconds before a stop; 0 = never.")
    start_timeout: float = Field(default=600, gt=0, description="Seconds to become ready.")
    stop_timeout: float = Field(default=10, ge=0, description="Seconds from SIGTERM to SIGKILL.")
    max_queue: int = Field(default=256, ge=0, description="Requests that may wait for a slot.")
    evict_wait: float = Field(default=120, gt=0, description="Seconds to wait for busy engines.")
    max_wait: float | None = Field(
        default=None,
        gt=0,
        description="Seconds a request may wait for its engine (a start, room, a slot, a stop "
        "under way) before a 503 with Retry-After; default: evict_wait + start_timeout + "
        "stop_timeout + 60, the longest a start can legitimately take.",
    )
    read_timeout: float = Field(
        default=600, gt=0, description="Seconds an engine may send nothing mid-answer; then 502."
    )
    health_interval: float = Field(
        default=10, ge=0, description="Seconds between checks that ready engines answer; 0 = off."
    )
    health_failures: int = Field(
        default=3, ge=1, description="Checks in a row a ready engine may miss before it is killed."
    )
    runtime: RuntimeKind = Field(
        default="local", description="Where engines run: local processes, or docker containers."
    )
    sleep_after: float = Field(
        default=0,
        ge=0,
        description="Idle seconds before a model that can sleep is put to sleep; "
        "0 = only when its GPU memory is needed.",
    )

    container: Container = Field(
        default_factory=Container, description="Container settings every docker model starts from."
    )


class EngineSettings(_Strict):
    binary: str | None = Field(default=None, description="Executable (default: usual name).")


def engine_kinds() -> list[str]:
    """The engine kinds of the registry (vramgate.engines), read when a file is validated."""
    from vramgate.engines import REGISTRY  # the engines import this module: not at import time

    return sorted(REGISTRY)


def engine_sleep_levels(kind: str) -> frozenset[int]:
    """The `sleep` levels an engine kind supports (none: it is stopped instead)."""
    from vramgate.engines import REGISTRY

    return REGISTRY[kind].sleep_levels


def engine_tasks(kind: str) -> frozenset[str]:
    """The tasks an engine kind can serve (generate, embed, rerank)."""
    from vramgate.engines import REGISTRY

    return REGISTRY[kind].tasks


def _check_kind(kind: str) -> str:
    if kind not in engine_kinds():
        raise ValueError(f"unknown engine {kind!r}; expected one of: {', '.join(engine_kinds())}")
    return kind


def _kinds_enum(schema: dict[str, Any]) -> None:
    schema["enum"] = list[Any](engine_kinds())


def _check_keys(keys: list[str]) -> list[str]:
    """A blank key (an empty `${env.X}`) would match a blank header: refuse the file instead."""
    for i, key in enumerate(keys):
        if not key.strip():
            raise ValueError(
                f"key [{i}] is empty (an unset or empty ${{env.X}}?); remove it or give it a value"
            )
    return keys


Keys = Annotated[list[str], AfterValidator(_check_keys)]
EngineKind = Annotated[str, AfterValidator(_check_kind)]


class ModelConfig(_Strict):
    engine: EngineKind = Field(
        description="The engine kind.", json_schema_extra=lambda schema: _kinds_enum(schema)
    )
    source: str | None = Field(default=None, description="Model path or hub id.")
    cmd: str | None = Field(default=None, description="A `command` engine's command line.")
    args: list[str] = Field(default_factory=list, description="Extra arguments for the engine.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables.")
    aliases: list[str] = Field(default_factory=list)
    task: Task = Field(default="generate", description="generate, embed or rerank.")
    health: str = Field(default="/health", description="Readiness path, ready when 200.")
    upstream_model: str | None = Field(default=None, description="Model name the engine expects.")
    ttl: Seconds | None = Field(default=None, ge=0, description="Idle seconds; 0 = never stop.")
    start_timeout: float | None = Field(default=None, gt=0)
    stop_timeout: float | None = Field(default=None, ge=0)
    max_concurrency: int | None = Field(default=None, ge=1, description="Requests relayed at once.")
    vram_mib: int | None = Field(default=None, gt=0, description="GPU memory hint until measured.")
    ram_mib: int | None = Field(
        default=None,
        gt=0,
        description="Host RAM hint until measured, for engines on the CPU (device: cpu, or "
        "llama.cpp with -ngl below its layer count).",
    )
    param_count: float | None = Field(
        default=None, gt=0, description="Billions of parameters, to estimate from when no file can."
    )
    precision: Literal["fp32", "fp16", "bf16", "fp8", "int8", "int4"] = Field(
        default="bf16", description="Weight precision, with param_count."
    )
    pinned: bool = Field(default=False, description="Started with the gateway, never stopped.")
    gpus: int = Field(
        default=1, ge=1, description="GPUs the model is split over (tensor parallel), 1/N on each."
    )
    device: Literal["auto", "cuda", "cpu"] = Field(
        default="auto",
        description="auto: on GPUs where the gateway sees any (NVML or simulated), else on the "
        "CPU, counted in host RAM; cuda: on GPUs (where it sees none: on the CPU, counted in "
        "host RAM, with a note); cpu: on the CPU, takes no GPU memory and sees no GPU.",
    )
    runtime: RuntimeKind | None = Field(
        default=None, description="local or docker (default: defaults.runtime)."
    )
    container: Container | None = Field(
        default=None, description="runtime docker: image, volumes, shm_size, ipc, network, extra."
    )
    nodes: list[str] = Field(
        default_factory=list,
        description="With cluster.ray: the nodes it may run on (their `vramgate-node` labels, or "
        "Ray node ids); empty: any node.",
    )
    sleep: int = Field(
        default=0, ge=0, le=2,
        description="Where room is needed, put the engine to sleep instead of stopping it "
        "(vllm 1|2, sglang 1, fake engines): 1 keeps its weights in host RAM, 2 drops them and "
        "reloads them from disk at the wake; 0 = never sleeps.",
    )  # fmt: skip
    sleep_after: float | None = Field(
        default=None, ge=0, description="Idle seconds before it sleeps (default: defaults')."
    )
    keep_kv: bool | None = Field(
        default=None,
        description="Save the engine's KV caches before it stops and restore them at its next "
        "start (llamacpp). Default: on for llama-server models, but for sliding-window models "
        "(gemma 2 and 3) whose full cache (--swa-full, needed for a restore to be used) would "
        "add more than 5% to their footprint (gemma 3 270M: above a ~5.5k context); "
        "keep_kv: true keeps those too, false keeps none.",
    )
    dtype: str | None = Field(
        default=None,
        description="Weights' dtype for engines that take one (transformers, vllm, sglang: "
        "--dtype); default: the weights' own.",
    )
    max_queue: int | None = Field(default=None, ge=0, description="Waiting requests; then 429.")
    native_apis: list[Literal["anthropic"]] | None = Field(
        default=None,
        description="Client APIs the engine serves itself beside OpenAI's (relayed as they are; "
        "the others are translated); default: its engine kind's (llamacpp, vllm, sglang: "
        "anthropic). Ollama's API is always translated: no engine kind serves it.",
    )

    @field_validator("native_apis", mode="before")
    @classmethod
    def _no_native_ollama(cls, apis: Any) -> Any:
        # Accepted once, it did nothing: Ollama's requests were translated all the same.
        if isinstance(apis, list) and "ollama" in apis:
            raise ValueError(
                "'ollama' is no engine's own API here: Ollama's requests are always translated "
                "to the engine's OpenAI API; remove it (only 'anthropic' is relayed natively)"
            )
        return apis

    vision: bool | None = Field(
        default=None,
        description="Whether the model takes images (false: an image is a 400 at the gateway); "
        "default: llamacpp with --mmproj in args, else the engine decides.",
    )
    max_wait: float | None = Field(
        default=None, gt=0, description="Seconds a request may wait for its engine; then 503."
    )
    api_keys: Keys = Field(
        default_factory=list, description="Only these keys (and admin keys) reach this model."
    )
    upstream_api_key: str | None = Field(
        default=None,
        min_length=1,
        description="The key the engine itself wants, sent as `Authorization: Bearer KEY` on "
        "every relayed request (default: the engine's `--api-key` in args); never shown.",
    )

    @model_validator(mode="after")
    def _check_engine_fields(self) -> ModelConfig:
        if self.engine == "command":
            if not self.cmd:
                raise ValueError(
                    "engine 'command' needs `cmd`, e.g. cmd: 'my-server --port ${PORT}'"
                )
            if "${PORT}" not in self.cmd:
                raise ValueError(
                    "`cmd` must contain ${PORT}, where the gateway puts the engine's port"
                )
            try:  # split as engines/command.py will, at every start: refused once, here
                shlex.split(self.cmd)
            except ValueError as exc:
                raise ValueError(f"`cmd` cannot be split into arguments: {exc}") from None
        else:
            if not self.source:
                raise ValueError(f"engine '{self.engine}' needs `source`, a model path or hub id")
            if self.cmd:
                raise ValueError(f"`cmd` is only for engine 'command', not '{self.engine}'")
        if self.sleep and self.sleep not in engine_sleep_levels(self.engine):
            levels = ", ".join(map(str, sorted(engine_sleep_levels(self.engine)))) or "none"
            raise ValueError(
                f"engine '{self.engine}' cannot sleep at level {self.sleep} (its levels: {levels})"
            )
        if self.task not in engine_tasks(self.engine):
            served = ", ".join(sorted(engine_tasks(self.engine)))
            raise ValueError(
                f"engine '{self.engine}' cannot serve task '{self.task}' (it serves: {served})"
            )
        if not self.health.startswith("/"):
            raise ValueError(f"`health` must be a path starting with '/', got {self.health!r}")
        return self


class Gpus(_Strict):
    simulate_mib: list[int] = Field(
        default_factory=list, description="Simulated GPUs, one total in MiB each (tests, no GPU)."
    )
    reserve_mib: int = Field(default=512, ge=0, description="MiB per GPU never handed out.")
    min_residency: float = Field(
        default=0, ge=0, description="Seconds a loaded model is evicted only if nothing else can."
    )
    drain_after: float = Field(
        default=3,
        ge=0,
        description="Seconds a busy model serves after its start before it may be drained to "
        "make room for another (its queue then waits for its next turn); 0 = at once.",
    )
    eviction: Literal["lru", "frequency", "cost"] = Field(
        default="lru",
        description="Which idle engines make room first: least recently used; least often "
        "asked for with aging (GreedyDual-Size-Frequency; fewer loads on skewed traffic); or "
        "cheapest to bring back for how long it has been idle (measured load or wake time).",
    )
    simulate_others_file: str | None = Field(
        default=None,
        description="Simulated GPUs: a file of what other programs use, one integer (MiB) a "
        "line for GPU 0, 1, ...; read at every check (tests rewrite it).",
    )
    yield_above: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Make way for other programs: when a GPU's use passes this share of its "
        "total because of them, idle engines there sleep or stop (cheapest to bring back "
        "first) and no engine starts there until they use less; off by default.",
    )
    poll_s: float = Field(
        default=2, gt=0, description="Seconds between looks at other programs' GPU use."
    )
    unknown_footprint: Literal["estimate", "isolate", "refuse"] = Field(
        default="estimate",
        description="Not yet measured, no vram_mib: use the metadata estimate (else a discovery "
        "run), always a discovery run, or use the estimate (else refuse).",
    )

    @model_validator(mode="after")
    def _check_sizes(self) -> Gpus:
        for i, total in enumerate(self.simulate_mib):
            if total <= self.reserve_mib:
                reserve = self.reserve_mib
                raise ValueError(f"simulate_mib[{i}] = {total} must exceed reserve_mib ({reserve})")
        return self


class RayCluster(_Strict):
    address: str = Field(description="The running Ray cluster's GCS address, HOST:PORT.")
    connect_timeout: float = Field(
        default=30, gt=0, description="Seconds to join the cluster and to start a node's agent."
    )
    poll_s: float = Field(
        default=1.0, gt=0, description="Seconds between reads of each node's GPUs and of the nodes."
    )
    namespace: str = Field(
        default="vramgate", description="Ray namespace of this gateway's agents."
    )


class Cluster(_Strict):
    ray: RayCluster | None = Field(
        default=None, description="Place engines on the GPUs of this Ray cluster's nodes."
    )


class Auth(_Strict):
    api_keys: Keys = Field(default_factory=list, description="Keys that open /v1 routes.")
    admin_keys: Keys = Field(
        default_factory=list, description="Keys that open everything, admin routes included."
    )
    metrics: Literal["open", "key"] = Field(
        default="key", description="/metrics without a key (open) or with any key (key)."
    )
    status_page: Literal["open", "off"] = Field(
        default="open",
        description="The page at / (open to all; the data it shows still needs a key) or off.",
    )

    @property
    def enabled(self) -> bool:
        return bool(self.api_keys or self.admin_keys)


class Settings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Names a request's Host may give besides loopback names, addresses, `host` "
        "and the machine's hostname (a guard against DNS rebinding): a name, `*.example.com` "
        "for its subdomains, `*` for any.",
    )
    ollama_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="A second listener on this port (Ollama's is 11434) serving the same API, "
        "so that Ollama clients need no path; its / answers 'Ollama is running'.",
    )
    state_dir: Path = Path("./state")
    max_running: int | None = Field(default=None, ge=1, description="Engines at once; LRU evicts.")
    max_body_mb: float = Field(default=32, gt=0, description="Largest request body in MiB.")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    models_dir: Path = Field(default=Path("./models"), description="Downloads and inventory.")
    allow_adhoc: bool = Field(
        default=False, description="Requests may name models in models_dir not configured."
    )
    max_adhoc: int = Field(
        default=16,
        ge=1,
        description="Ad-hoc models defined at once; past it, the least recently used one with no "
        "engine is forgotten (and one is refused with 503 when each has an engine).",
    )
    drain_timeout: float = Field(
        default=30, ge=0, description="Seconds in-flight requests may finish at SIGTERM."
    )
    client_write_timeout: float = Field(
        default=60,
        gt=0,
        description="Seconds a client may leave its answer unread (its connection's buffers "
        "full); past them the connection is closed and the request cancelled, its engine slot "
        "freed.",
    )
    stream_keepalive_s: float = Field(
        default=10,
        ge=0,
        description="A streamed request that waits this long for its engine (a cold start) gets "
        "its answer begun and a keep-alive this often (SSE comment, Anthropic ping); 0 = off.",
    )
    auth: Auth = Auth()
    defaults: Defaults = Defaults()
    engines: dict[str, EngineSettings] = Field(
        default_factory=dict, description="Per engine kind: its settings (binary)."
    )
    gpus: Gpus = Gpus()
    host_ram_mib: int | None = Field(
        default=None, ge=0,
        description="Host RAM that engines on the CPU and sleeping engines may hold in all; "
        "default: what the gateway may take when it starts, the least of MemAvailable and "
        "what its cgroup's limit (a container's, a systemd MemoryMax) leaves (and never more "
        "than that at each placement). On a Ray cluster, each node's budget (default: what "
        "the node had available when it joined).",
    )  # fmt: skip
    kv_disk_mib: int = Field(
        default=4096, ge=0, description="Disk for kept KV caches (state_dir/kv); LRU beyond it."
    )
    cluster: Cluster = Field(
        default_factory=Cluster, description="Several machines (absent: this one alone)."
    )
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    default_model: str | None = Field(
        default=None,
        description="The model (a name or alias) of requests that name none; default: the "
        "sole configured model, if there is one.",
    )
    upstream_access: Literal["admin", "keys"] = Field(
        default="admin",
        description="Who may use /upstream/MODEL/PATH (any route of a model's engine): admin "
        "keys, or also the keys that open the model.",
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Browser origins (https://host:port, or '*') whose pages may call the "
        "gateway: preflights answered, Access-Control-* headers sent; default: none.",
    )

    # Decided once, from the configured models: the Scheduler adds ad-hoc models to `models`
    # by model_copy (which runs no validator and keeps this), and an ad-hoc model is nobody's
    # default (counting them, the sole configured model stopped being it after one).
    _default_name: str | None = PrivateAttr(default=None)

    @property
    def default_name(self) -> str | None:
        """The model of requests that name none: `default_model`, else the sole configured
        model (ad-hoc models never count)."""
        return self._default_name

    @model_validator(mode="after")
    def _check_default_model(self) -> Settings:
        if self.default_model is None:
            self._default_name = next(iter(self.models)) if len(self.models) == 1 else None
            return self
        self._default_name = self.resolve(self.default_model)
        if self._default_name is None:
            known = ", ".join(sorted(self.models)) or "(none configured)"
            raise ValueError(
                f"default_model {self.default_model!r} is no configured model; known: {known}"
            )
        return self

    @property
    def ray(self) -> RayCluster | None:
        return self.cluster.ray

    @property
    def auth_enabled(self) -> bool:
        return self.auth.enabled or any(m.api_keys for m in self.models.values())

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names(cls, hosts: list[str]) -> list[str]:
        names = [h.strip().lower().removesuffix(".") for h in hosts]
        for name in names:
            if not name or ":" in name or "/" in name:
                raise ValueError(f"{name!r}: a host name without port or scheme (gw.example.com)")
        return names

    @field_validator("engines")
    @classmethod
    def _known_engines(cls, engines: dict[str, EngineSettings]) -> dict[str, EngineSettings]:
        for kind in engines:
            _check_kind(kind)
        return engines

    def runtime_of(self, model: ModelConfig) -> RuntimeKind:
        return model.runtime or self.defaults.runtime

    def container_of(self, model: ModelConfig) -> Container:
        """`model`'s container settings over the defaults'."""
        return (model.container or Container()).over(self.defaults.container)

    @model_validator(mode="after")
    def _check_containers(self) -> Settings:
        for name, model in self.models.items():
            if self.runtime_of(model) == "docker" and not self.container_of(model).image:
                raise ValueError(
                    f"model {name!r} runs in docker but names no image: set "
                    f"models.{name}.container.image (or defaults.container.image)"
                )
        return self

    @model_validator(mode="after")
    def _check_cluster(self) -> Settings:
        for name, model in self.models.items():
            if model.nodes and self.ray is None:
                raise ValueError(
                    f"models.{name}.nodes needs a cluster: set cluster.ray.address, or remove it"
                )
            if self.ray is not None and self.runtime_of(model) == "docker":
                raise ValueError(
                    f"model {name!r} runs in docker, which a Ray cluster does not run: remove "
                    f"models.{name}.runtime (its engine runs on a node as a process)"
                )
        return self

    @model_validator(mode="after")
    def _check_names(self) -> Settings:
        seen: dict[str, str] = {}
        for name, model in self.models.items():
            for label in (name, *model.aliases):
                if label in seen and seen[label] != name:
                    raise ValueError(
                        f"name {label!r} is used by both models {seen[label]!r} and {name!r}; "
                        "names and aliases must be unique"
                    )
                seen[label] = name
        return self

    def model_setting(self, name: str, key: str) -> float:
        """A model's own `key` (ttl, start_timeout, stop_timeout, max_queue), else the default."""
        return self.setting_of(self.models[name], key)

    def setting_of(self, model: ModelConfig, key: str) -> float:
        """`model`'s own `key`, else the default (for a model a reload has just removed, too)."""
        value = getattr(model, key)
        return getattr(self.defaults, key) if value is None else value

    def max_wait_of(self, model: ModelConfig) -> float:
        """How long a request for `model` may wait before it is refused (503)."""
        own = model.max_wait if model.max_wait is not None else self.defaults.max_wait
        if own is not None:
            return own
        starting = self.setting_of(model, "start_timeout") + self.setting_of(model, "stop_timeout")
        return self.defaults.evict_wait + starting + 60

    def engine_log(self, name: str) -> Path:
        """Where a model's engine output is kept (ad-hoc model names may hold '/')."""
        return Path(self.state_dir) / "logs" / f"{file_stem(name)}.log"

    def ttl_s(self, name: str) -> float:
        return self.model_setting(name, "ttl")

    def resolve(self, label: str) -> str | None:
        """The model name that `label` stands for, or None: a name, an alias, or (an agent's
        own model names, `claude-*-haiku-*`) an alias pattern; exact names win over patterns,
        and the longest pattern wins among those that match."""
        if label in self.models:
            return label
        exact, patterns = self._aliases
        found = exact.get(label)
        if found is not None:
            return found
        for pattern, name in patterns:  # longest first
            if fnmatch.fnmatchcase(label, pattern):
                return name
        return None

    @functools.cached_property
    def _aliases(self) -> tuple[dict[str, str], list[tuple[str, str]]]:
        """Exact aliases by label, and alias patterns (with *, ? or [) longest first."""
        exact: dict[str, str] = {}
        patterns: list[tuple[str, str]] = []
        for name, model in self.models.items():
            for alias in model.aliases:
                if is_pattern(alias):
                    patterns.append((alias, name))
                else:
                    exact.setdefault(alias, name)
        patterns.sort(key=lambda p: -len(p[0]))
        return exact, patterns

    def ambiguous_patterns(self) -> list[tuple[str, str, str, str]]:
        """Pairs of alias patterns of different models, of the same length, that some name
        matches both of: which one it reaches is then their order in the file."""
        _, patterns = self._aliases
        found = []
        for i, (first, one) in enumerate(patterns):
            for second, other in patterns[i + 1 :]:
                same = len(first) == len(second)
                if same and one != other and patterns_overlap(first, second):
                    found.append((first, one, second, other))
        return found


def is_pattern(alias: str) -> bool:
    return any(c in alias for c in "*?[")


def patterns_overlap(p: str, q: str) -> bool:
    """Whether some name matches both glob patterns (`[...]` read as any one character, so a
    few pairs that never overlap may be reported; none that do are missed)."""
    p, q = _simple(p), _simple(q)

    @functools.cache
    def both(i: int, j: int) -> bool:
        if i == len(p) and j == len(q):
            return True
        if i < len(p) and p[i] == "*":
            return both(i + 1, j) or (j < len(q) and both(i, j + 1))
        if j < len(q) and q[j] == "*":
            return both(i, j + 1) or (i < len(p) and both(i + 1, j))
        if i < len(p) and j < len(q) and (p[i] == q[j] or "?" in (p[i], q[j])):
            return both(i + 1, j + 1)
        return False

    return both(0, 0)


def _simple(pattern: str) -> str:
    return re.sub(r"\[[^\]]*\]", "?", pattern)


def guess_engine(source: str) -> str:
    """The engine a bare source implies: a GGUF file is llama.cpp's, anything else vLLM's."""
    return "llamacpp" if source.lower().endswith(".gguf") else "vllm"


def parse_model_flag(flag: str) -> tuple[str, dict[str, Any]]:
    """`NAME=[ENGINE:]SOURCE` from `vramgate serve --model` as a model entry; for the command
    engine, SOURCE is its command line (`NAME=command:my-server --port ${PORT}`)."""
    name, sep, source = flag.partition("=")
    if not sep or not name or not source:
        raise ConfigError(
            f"--model {flag!r}: expected NAME=[ENGINE:]SOURCE, e.g. gemma=/models/gemma.gguf or "
            "qwen=vllm:Qwen/Qwen3-0.6B"
        )
    kind, colon, rest = source.partition(":")
    if colon and kind in engine_kinds():
        return name, {"engine": kind, "cmd": rest} if kind == "command" else {
            "engine": kind, "source": rest
        }  # fmt: skip
    return name, {"engine": guess_engine(source), "source": source}


def apply_env_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Sets scalar keys from VRAMGATE_* variables; `__` separates levels.

    VRAMGATE_PORT=9000, VRAMGATE_DEFAULTS__TTL=60, VRAMGATE_MODELS__GEMMA__TTL=0. Keys match
    case-insensitively, so model names keep the spelling the file gives them.
    """
    for var, value in sorted(environ.items()):
        if not var.startswith(ENV_PREFIX) or var.startswith(ENV_PREFIX + "SIM_"):
            continue
        path = [p for p in var[len(ENV_PREFIX) :].lower().split("__") if p]
        if not path or path[0] not in Settings.model_fields:
            continue
        node = data
        for part in path[:-1]:
            key = _match_key(node, part)
            child = node.get(key)
            if not isinstance(child, dict):
                child = {}
                node[key] = child
            node = child
        node[_match_key(node, path[-1])] = value
    return data


def _match_key(node: dict[str, Any], part: str) -> str:
    return next((k for k in node if k.lower() == part), part)


ENV_REFERENCE = re.compile(r"\$\{env\.([A-Za-z_][A-Za-z0-9_]*)\}")


def substitute_env(
    data: Any, origin: str, where: str = "", environ: Mapping[str, str] | None = None
) -> Any:
    """Replaces `${env.NAME}` in every string of the file with the variable's value.

    A variable that is not set is an error naming the key, so a key meant to come from the
    environment can never silently be empty.
    """
    environ = os.environ if environ is None else environ
    if isinstance(data, dict):
        return {
            k: substitute_env(v, origin, f"{where}.{k}".lstrip("."), environ)
            for k, v in data.items()
        }
    if isinstance(data, list):
        return [substitute_env(v, origin, f"{where}[{i}]", environ) for i, v in enumerate(data)]
    if not isinstance(data, str):
        return data

    def value(match: re.Match[str]) -> str:
        name = match[1]
        if name not in environ:
            raise ConfigError(
                f"{origin}: {where or '(top level)'}: ${{env.{name}}} is used but the environment "
                f"variable {name} is not set; set it or write the value in the file"
            )
        return environ[name]

    return ENV_REFERENCE.sub(value, data)


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of keys, got {type(data).__name__}"
        )
    return data


def load_settings(
    path: Path | None = None,
    *,
    models: Sequence[str] = (),
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """File, then environment, then `--model` flags and other command-line overrides."""
    data: dict[str, Any] = substitute_env(read_yaml(path), str(path)) if path else {}
    data = apply_env_overrides(data, os.environ if environ is None else environ)
    if models:
        data.setdefault("models", {})
        for flag in models:
            name, entry = parse_model_flag(flag)
            data["models"][name] = entry
    for key, value in (overrides or {}).items():
        if value is not None:
            data[key] = value
    return validate(data, str(path) if path else "<command line>")


def validate(data: dict[str, Any], origin: str) -> Settings:
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, origin)) from None


def format_errors(exc: ValidationError, origin: str) -> str:
    lines = [f"{origin}: {exc.error_count()} error(s) in the configuration"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            parent = _parent_model(err["loc"])
            allowed = ", ".join(parent.model_fields) if parent else "see `vramgate check --help`"
            lines.append(f"  {loc}: unknown key; expected one of: {allowed}")
            continue
        msg = err["msg"].removeprefix("Value error, ")
        given = err.get("input")
        secret = any(str(p).endswith("_keys") for p in err["loc"])  # never echo a key
        plain = isinstance(given, dict | list) or given is None or secret
        shown = "" if plain else f", got {given!r}"
        lines.append(f"  {loc}: {msg}{shown}")
    return "\n".join(lines)


def _parent_model(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The pydantic model that holds the key at `loc`, to list the keys it accepts."""
    model: type[BaseModel] = Settings
    parts = list(loc[:-1])
    while parts:
        part = parts.pop(0)
        if model is Settings and part == "models":
            if not parts:
                return None
            parts.pop(0)
            model = ModelConfig
            continue
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model
