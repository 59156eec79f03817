"""What the Scheduler serves changing while it runs: a reloaded configuration (new models at
once, changed and removed ones once idle) and ad-hoc models a request names from models_dir
(capped, one name per file); part of the Scheduler (driver.py)."""

from __future__ import annotations

from collections.abc import Callable

from vramgate.config import ModelConfig, Settings
from vramgate.engines import adapters
from vramgate.engines.base import EngineAdapter
from vramgate.errors import GatewayBusy
from vramgate.events import Events
from vramgate.instances import Instance
from vramgate.memory import Memory
from vramgate.scheduling.snapshot import Pending, State


class Definitions:
    """The Scheduler's model definitions (its other parts give the attributes below)."""

    settings: Settings
    adapters: dict[str, EngineAdapter]
    events: Events
    memory: Memory
    instances: dict[str, Instance]
    adhoc_names: set[str]
    adhoc_labels: dict[str, str]

    # Given by the Scheduler: declared, not defined (a stub here could shadow the real one).
    add_model: Callable[[str, ModelConfig], Instance]
    _notify: Callable[[], None]
    _tick: Callable[[], None]

    def define_adhoc(self, name: str, model: ModelConfig, message: str) -> None:
        """Adds (or redefines, when no engine runs) a model a request named from models_dir;
        past max_adhoc, the least recently used ad-hoc model with no engine is forgotten."""
        if name not in self.adhoc_names and len(self.adhoc_names) >= self.settings.max_adhoc:
            self._forget_adhoc(name)
        self.settings = self.settings.model_copy(
            update={"models": {**self.settings.models, name: model}}
        )
        inst = self.instances.get(name) or self.add_model(name, model)
        inst.model, inst.notes = model, None
        self._set_pending(inst, None)
        self.memory.refresh(name, model)
        self.adhoc_names.add(name)
        self.events.record("adhoc", name, message)

    def _forget_adhoc(self, wanted: str) -> None:
        gone = [
            i
            for n in self.adhoc_names
            if (i := self.instances[n]).state in (State.STOPPED, State.FAILED) and i.is_idle
        ]
        if not gone:
            raise GatewayBusy(
                f"cannot add ad-hoc model '{wanted}': max_adhoc={self.settings.max_adhoc} "
                "ad-hoc models are defined and each has an engine; unload one or retry later",
                headers={"Retry-After": "5"},
            )
        old = min(gone, key=lambda i: i.last_used).name
        del self.instances[old]
        self.adhoc_names.discard(old)
        self.memory.estimates.pop(old, None)
        models = {n: m for n, m in self.settings.models.items() if n != old}
        self.settings = self.settings.model_copy(update={"models": models})
        self.adhoc_labels = {k: v for k, v in self.adhoc_labels.items() if v != old}
        self.events.record("adhoc", old, f"{old}: ad-hoc model forgotten (max_adhoc, for {wanted})")

    def remember_label(self, label: str, name: str) -> None:
        """Another spelling of an ad-hoc model's path, so that it is not looked up again."""
        if len(self.adhoc_labels) >= 8 * self.settings.max_adhoc:
            self.adhoc_labels.clear()  # bounded: any key may send any number of spellings
        self.adhoc_labels[label] = name

    def apply(self, settings: Settings, changed: set[str], removed: set[str], adhoc: set[str]):
        """Takes a reloaded configuration: new models now, changed and removed ones once idle."""
        self.settings, self.adapters, self.adhoc_names = settings, adapters(settings), adhoc
        for name, inst in self.instances.items():
            if name in removed:
                self._set_pending(inst, Pending.REMOVED)
            elif name in changed:
                self._set_pending(inst, Pending.CHANGED, settings.models[name])
            else:
                self._set_pending(inst, None)
        for name, model in settings.models.items():
            if name not in self.instances:
                self.memory.refresh(name, model)
                self.add_model(name, model)
        self._tick()

    def _set_pending(
        self, inst: Instance, pending: Pending | None, replacement: ModelConfig | None = None
    ) -> None:
        """A reload's change for `inst`, or none: then a drain for an earlier change (taken
        back since: a reload that restores its definition) ends, and its requests go on."""
        inst.pending, inst.replacement = pending, replacement
        if pending is None and inst.draining_for == "reload":
            inst.draining_for = None
            self._notify()

    def _replace(self, inst: Instance) -> None:
        assert inst.replacement is not None
        inst.model, inst.replacement, inst.pending = inst.replacement, None, None
        inst.notes = None
        self.memory.refresh(inst.name, inst.model)
