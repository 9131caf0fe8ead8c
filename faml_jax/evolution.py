"""FGA over trained networks (docs/method.md 3, Algorithm 1): the population, its lineage
(population.json) and the generations, as ``evolve(config, fga_config, workdir)``; what
``python -m experiments.evolve`` runs.

    >>> from faml_jax import config, evolution
    >>> result = evolution.evolve(presets.preset("synthetic"), config.FGAConfig(population=4), "runs/evo")

In each generation:

  1. each network's selection probability is its inverse training loss over the sum (roulette;
     the reference loss, plain CE of the training batches, not the sampled ML loss);
  2. each child draws ``parents`` distinct parents by those probabilities; its convolution
     kernels are the parents' mean (Eq. 9), everything else is its fittest parent's;
  3. ``new_members`` fresh networks join;
  4. children and new networks are trained until the stability detector says "well trained"
     (at most the run's epochs); children restart the Lr1 regime (``child_lr``);
  5. the ``population`` networks with the lowest training loss (reference CE) survive.

The workdir holds ``evolve.json`` (the configuration), ``population.json`` (the lineage) and
``members/<name>/`` (each network's ``trainer.fit`` outputs). Names: ``g0-m<i>`` initial networks
(``given<i>`` when given as ``members``), ``g<g>-c<i>`` children and ``g<g>-n<i>`` new networks of
generation g.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from faml_jax import fga, models, signals, train
from faml_jax.compiled import compiled
from faml_jax.config import FGAConfig, RunConfig
from faml_jax.evolve_workdir import evolve_record, prepare_evolve_workdir
from faml_jax.lineage import MemberRecord, check_given_members, given_summary, lineage_table
from faml_jax.loop import MemberParallel, stop_signal, train_member, train_side_by_side
from faml_jax.member import Member
from faml_jax.metrics import classification_metrics
from faml_jax.runs import check_network, final_checkpoint, member_workdir, read_lineage, restore_variables
from faml_jax.session import workdir_session
from faml_jax.setup import Setup
from faml_jax.trainer import adopt_recorded, prepare_workdir, recorded_config
from faml_jax.versions import EVOLUTION_VERSION, stamped
from faml_jax.writer import write_json

logger = logging.getLogger(__name__)
_fuse = jax.jit(fga.fuse)  # one compiled fusion per parameter structure, for every evolution

# ---------------------------------------------------------------------------------------------
# The evolution

# Batches used to report a child's accuracy with recomputed BatchNorm statistics when
# ``recompute_bn`` is off (the report is a diagnostic; the child keeps its parent's statistics).
DIAGNOSTIC_BN_BATCHES = 10
# Folded into the run's seed for the shared start of all networks (not a member seed).
START_TAG = 999_999


def member_seed(seed: int, serial: int) -> int:
    """The seed of the ``serial``-th network this evolution creates (initial ones first)."""
    return seed * 1000 + serial


class Evolution:
    """One evolution's workdir: its configuration, lineage (population.json) and networks."""

    def __init__(
        self,
        config: RunConfig,
        fga_config: FGAConfig,
        workdir: Path,
        *,
        given: list[Path],
        member_parallel: bool,
        progress: bool,
    ):
        self.config, self.fga, self.workdir = config, fga_config, workdir
        self.given, self.member_parallel, self.progress = given, member_parallel, progress
        self.setup = Setup(config)
        path = workdir / "population.json"
        self.lineage = (
            read_lineage(workdir)
            if path.exists()
            else {"dataset": config.data.dataset, "model": config.model_name, "members": {}, "generations": []}
        )
        self.lineage["members"] = {
            name: MemberRecord.from_json(name, entry, str(path)) for name, entry in self.lineage["members"].items()
        }
        # The shared start (with config.init, the paper's common pre-trained start).
        self.start = self.setup.with_backbone(
            models.init(self.setup.model, jax.random.fold_in(jax.random.key(config.seed), START_TAG))
        )
        # A resumed evolution's survivors are the next children's parents: a given network among
        # them must still be the one recorded, refused before anything is written.
        for name in self.lineage["generations"][-1]["survivors"] if self.lineage["generations"] else ():
            self.network(name)
        self._fuse = _fuse
        model = self.setup.model
        self._recompute = compiled(
            ("recompute-batch-stats", config.model),
            lambda: jax.jit(lambda v, x: fga.recompute_batch_stats(model, v, x)),
        )

    @functools.cached_property
    def side_by_side(self) -> MemberParallel:
        """The member-parallel train step (compiled once per evolution)."""
        return MemberParallel(self.setup)

    # -- bookkeeping ---------------------------------------------------------------------------

    def save(self) -> None:
        members = {name: record.to_json() for name, record in self.lineage["members"].items()}
        write_json(self.workdir / "population.json", stamped({**self.lineage, "members": members}, EVOLUTION_VERSION))

    def record(self, name: str) -> MemberRecord:
        return self.lineage["members"][name]

    def member_dir(self, name: str) -> Path:
        return member_workdir(self.workdir, self.record(name).workdir)

    def network(self, name: str) -> tuple[Path, int | None]:
        """A trained network's workdir and the checkpoint to use (None: its latest), a given
        network checked to be the one recorded (``runs.check_network``)."""
        record = self.record(name)
        return check_network(self.workdir, name, record.to_json()), record.checkpoint_epoch

    def loss(self, name: str) -> float:
        """A network's fitness: its final reference loss (plain CE of the training batches,
        docs/method.md 2.4 [choice]), not the sampled ML loss."""
        return self.record(name).train_ce

    def test_accuracy(self, variables: dict) -> float:
        logits, labels = self.setup.test_logits(train.replicate(variables, self.setup.devices))
        return classification_metrics(logits, labels)["accuracy"]

    # -- steps of Algorithm 1 -----------------------------------------------------------------

    def initial_population(self) -> list[str]:
        if self.given:
            names = []
            for i, path in enumerate(self.given):
                name = f"given{i}"
                record = MemberRecord(generation=0, origin="given", workdir=str(path.resolve()), seed=None)
                record.trained(given_summary(path))
                record.checkpoint_epoch, record.checkpoint_digest = final_checkpoint(path)
                self.lineage["members"][name] = record
                names.append(name)
            return names
        names = [f"g0-m{i}" for i in range(self.fga.population)]
        for i, name in enumerate(names):
            self.lineage["members"].setdefault(
                name, MemberRecord(0, "initial", f"members/{name}", member_seed(self.config.seed, i))
            )
        self.save()
        self.train(names)
        return names

    def plan(self, generation: int, population: list[str]) -> dict:
        """Choose every child's parents (deterministic in seed and generation) and name the new
        networks; recorded before anything is trained."""
        losses = [self.loss(n) for n in population]
        probs = np.asarray(fga.selection_probs(losses))
        key = jax.random.fold_in(jax.random.key(self.config.seed), generation)
        first_serial = self.fga.population + (generation - 1) * (self.fga.children + self.fga.new_members)
        children, new = [], []
        for c in range(self.fga.children):
            parents = np.asarray(fga.select_parents(jax.random.fold_in(key, c), losses, self.fga.parents))
            name = f"g{generation}-c{c}"
            self.lineage["members"][name] = MemberRecord(
                generation,
                "child",
                f"members/{name}",
                member_seed(self.config.seed, first_serial + c),
                parents=[population[p] for p in parents],
                parent_probs=[float(probs[p]) for p in parents],
            )
            children.append(name)
        for i in range(self.fga.new_members):
            name = f"g{generation}-n{i}"
            self.lineage["members"][name] = MemberRecord(
                generation,
                "new",
                f"members/{name}",
                member_seed(self.config.seed, first_serial + self.fga.children + i),
            )
            new.append(name)
        entry = {
            "generation": generation,
            "population": population,
            "losses": losses,
            "selection_probs": probs.tolist(),
            "children": children,
            "new": new,
        }
        self.lineage.setdefault("plans", {})[str(generation)] = entry
        self.save()
        return entry

    def child_variables(self, name: str) -> dict:
        """Fuse a child from its parents' final weights (Eq. 9); report its test accuracy as fused
        and with recomputed BatchNorm statistics; return the variables it starts from."""
        record = self.record(name)
        parents = []
        for parent in record.parents:
            path, epoch = self.network(parent)
            parents.append(restore_variables(path, self.config, epoch))
        child = self._fuse(fga.stack(parents), jnp.arange(len(parents)))
        batches = self.fga.recompute_bn or DIAGNOSTIC_BN_BATCHES
        # The same batches in every process, so that all processes start the child alike.
        iterator = iter(self.setup.loader(record.seed, whole_batches=True).iterate(0))
        images = np.stack([next(iterator)["image"] for _ in range(min(batches, self.setup.steps_per_epoch()))])
        recomputed = self._recompute(child, images)
        record.fused_test_accuracy = self.test_accuracy(child)
        record.fused_recomputed_bn_test_accuracy = self.test_accuracy(recomputed)
        record.recompute_bn_batches = len(images)
        record.parent_test_accuracies = [self.record(p).test_accuracy for p in record.parents]
        recomputed_accuracy = f"{record.fused_recomputed_bn_test_accuracy:.4f}"
        logger.info(
            f"{name}: fused from {', '.join(record.parents)}: test acc {record.fused_test_accuracy:.4f}"
            + (
                f", {recomputed_accuracy} with BatchNorm recomputed on {len(images)} batches (its start)"
                if self.fga.recompute_bn
                else f" with its fittest parent's BatchNorm statistics (its start; a diagnostic: {recomputed_accuracy} "
                f"with them recomputed on {len(images)} batches, not applied without --recompute-bn)"
            )
        )
        self.save()
        return jax.device_get(recomputed if self.fga.recompute_bn else child)

    def start_variables(self, seed: int) -> dict | None:
        """Where a fresh network starts: the shared start with its own head (``fc``) drawn from
        its seed, or (``shared_start=False``) its seed's own start (``Setup.start_variables``)."""
        if not self.fga.shared_start:
            return self.setup.start_variables(seed)
        own = self.setup.initial_state(seed).params
        return jax.device_get({**self.start, "params": {**self.start["params"], "fc": own["fc"]}})

    def train(self, names: list[str]) -> None:
        """Train the networks ``names`` (children are fused first) until each is done."""
        members = []
        try:
            for name in names:
                record = self.record(name)
                if record.status == "trained":
                    continue
                workdir = self.member_dir(name)
                config = dataclasses.replace(self.config, seed=record.seed)
                prepare_workdir(workdir, config, resume=True, overwrite=False)
                member = Member(
                    self.setup,
                    config,
                    workdir,
                    until_trained=self.fga.until_trained,
                    start_lr=self.fga.child_lr if record.origin == "child" else "lr1",
                    name=name,
                )
                members.append(member)
                init = None
                if not member.resumed:
                    init = self.child_variables(name) if record.origin == "child" else self.start_variables(record.seed)
                member.begin(init)
            pending = [m for m in members if not m.done]
            if self.member_parallel:
                train_side_by_side(self.setup, self.side_by_side, pending, progress=self.progress, on_done=self.finish)
            else:
                with signals.deferred():  # a signal at a network's last save still stops before the next
                    for member in pending:
                        train_member(self.setup, member, progress=self.progress)
                        self.finish(member)
                        stop = stop_signal(True)  # every process alike
                        if stop:
                            raise signals.stopped(stop, f"after {member.name} (trained and recorded)")
            for member in members:  # those already done when this call began
                if self.record(member.name).status != "trained":
                    self.finish(member)
        finally:
            for member in members:
                member.close()

    def finish(self, member: Member) -> None:
        """Record a trained network in the lineage (saved at once: resumable per network)."""
        self.record(member.name).trained(member.summary())
        self.save()

    def generation(self, generation: int, population: list[str]) -> list[str]:
        plan = self.lineage.get("plans", {}).get(str(generation)) or self.plan(generation, population)
        candidates = plan["population"] + plan["children"] + plan["new"]
        self.train(plan["children"] + plan["new"])
        losses = [self.loss(n) for n in candidates]
        kept = [candidates[i] for i in np.asarray(fga.survivors(losses, self.fga.population))]
        return self.close_generation({**plan, "candidates": candidates, "candidate_losses": losses}, kept)

    def close_generation(self, entry: dict, survivors: list[str]) -> list[str]:
        best = max(survivors, key=lambda n: self.record(n).test_accuracy)
        self.lineage["generations"].append(
            {
                **entry,
                "survivors": survivors,
                "best": {"name": best, "test_accuracy": self.record(best).test_accuracy},
                "mean_test_accuracy": float(np.mean([self.record(n).test_accuracy for n in survivors])),
            }
        )
        self.save()
        g = entry["generation"]
        logger.info(
            f"generation {g}: survivors {', '.join(survivors)}; best {best} "
            f"(test acc {self.record(best).test_accuracy:.4f})"
        )
        return survivors

    def run(self) -> dict:
        generations = self.lineage["generations"]
        if not generations:
            population = self.initial_population()
            self.close_generation({"generation": 0, "population": population}, population)
        population = generations[-1]["survivors"]
        for g in range(len(generations), self.fga.generations + 1):
            population = self.generation(g, population)
        return self.report()

    def report(self) -> dict:
        """Log a table of every network, and the best network before and after evolution."""
        for line in lineage_table(self.lineage["members"]):
            logger.info(line)
        first, last = self.lineage["generations"][0], self.lineage["generations"][-1]
        result = {
            "best_before": first["best"],
            "best_after": last["best"],
            "mean_before": first["mean_test_accuracy"],
            "mean_after": last["mean_test_accuracy"],
            "survivors": last["survivors"],
        }
        self.lineage["result"] = result
        self.save()
        logger.info(
            f"best network before: {first['best']['name']} {first['best']['test_accuracy']:.4f}; after "
            f"{last['generation']} generation(s): {last['best']['name']} {last['best']['test_accuracy']:.4f} "
            f"(population mean {first['mean_test_accuracy']:.4f} -> {last['mean_test_accuracy']:.4f})"
        )
        return result


def evolve(
    config: RunConfig,
    fga_config: FGAConfig,
    workdir: str | os.PathLike,
    *,
    members=(),
    resume: bool = False,
    overwrite: bool = False,
    side_by_side: bool = False,
    progress: bool = True,
    keep_recorded: tuple[str, ...] = (),
) -> dict:
    """Run (or continue) an evolution (Algorithm 1) in ``workdir``; returns the best network
    before and after (also in population.json under ``result``).

    ``members``: workdirs of finished ``trainer.fit`` runs that form the initial population
    (default: train ``fga_config.population`` networks here). ``side_by_side``: train one network
    per device (default: one after another, data-parallel). ``keep_recorded``: dotted
    run-configuration fields a resumed evolution takes from its evolve.json
    (``trainer.adopt_recorded``)."""
    workdir, given = Path(workdir), [Path(p) for p in members]
    if resume and keep_recorded:
        config = adopt_recorded(config, (recorded_config(workdir, "evolve.json") or {}).get("run"), keep_recorded)
    check_given_members(given, fga_config.population, config)
    networks = fga_config.population if side_by_side else 1
    with workdir_session(workdir, config, marker="evolve.json", networks=networks, evolution=True) as session:
        with session.undone_if_it_fails():
            continues = prepare_evolve_workdir(workdir, config, fga_config, given, resume, overwrite, write=False)
            session.starts(resume, continues, "evolution")
            evolution = Evolution(
                config, fga_config, workdir, given=given, member_parallel=side_by_side, progress=progress
            )
            # Only once the data set and everything else opened: a refused resume changes nothing.
            write_json(workdir / "evolve.json", stamped(evolve_record(config, fga_config, given)))
        return evolution.run()
