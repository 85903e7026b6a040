"""Soft actor-critic, whose `rlpd` preset is the reference RLPD recipe.

RLPD (Ball, Smith, Kostrikov, Levine 2023, "Efficient Online RL with Offline Data"), as in
ikostrikov/rlpd: 10 LayerNorm critics; target = min over a random subset of 2 target critics
(REDQ's in-target minimisation); the actor maximises the mean over all critics; `utd_ratio`
(20) critic updates per environment step, then one actor and one temperature update on the
last minibatch; entropy backup on; target entropy -|A|/2; initial temperature 1; every
learning rate 3e-4; gamma 0.99; tau 0.005; batches half offline, half online; 5,000 uniformly
random actions before updates start.

Deviation: the UTD loop runs in `jax.lax.scan` rather than a Python loop unrolled by `jit`,
so compile time does not grow with the ratio. The math is the same.

`sac` is the same agent as textbook SAC: 2 critics without LayerNorm (the target is their min),
the actor maximises their min, target entropy -|A|, UTD 1, no offline data; its critic learning
rate is CleanRL's 1e-3 instead of the paper's 3e-4. Why not RLPD's recipe cut to 2 critics
(`RLPD_2`, the default until 2026-12): on Hopper-v5 at 100k steps it ended at returns 444-725,
textbook SAC at 3e-4 at 486-515, and with the critic at 1e-3 at 856-2,018 over 4 seeds
(benchmarks/results/hopper_sac_100k*.md).

Offline ensembles (An, Moon, Kim, Song 2021, "Uncertainty-Based Offline RL with Diversified
Q-Ensemble"), as in CORL's `algorithms/offline/{sac_n,edac}.py`: N critics of 3 x 256 without
LayerNorm, target = min over all N, the actor maximises the min over all N, entropy backup on,
target entropy -|A|, every learning rate 3e-4, batch 256. `edac` adds the ensemble-gradient
diversity term
    eta / (N - 1) E_s,a[ sum_{i != j} <g_i, g_j> ],  g_i = grad_a Q_i(s, a) / (|grad_a Q_i| + 1e-10)
on dataset actions. CORL sums the TD loss over critics, o2o averages it, so the term is added as
eta / N times the above, which keeps CORL's ratio of the two. N and eta are CORL's per dataset
(`configs/offline/{sac_n,edac}/*/*.yaml`), registered as presets of that name:

    dataset                        sac-n N   edac N, eta
    hopper-medium                    500       50, 1
    hopper-medium-replay/-expert     200       50, 1
    walker2d-medium/-replay           20       10, 1
    walker2d-medium-expert            20       10, 5
    halfcheetah-medium/-replay        10       10, 1
    halfcheetah-medium-expert         10       10, 5
    any other (`default`)             10       10, 1

Presets: `rlpd`'s `navigation` is the reference AntMaze command (ikostrikov/rlpd README: no
entropy backup, 3 x 256 networks, the target's min over a subset of 1); its reward shift r - 1
is the task registry's (`o2o.envs.maze`); `manipulation` is the FQL paper's RLPD on OGBench
(`RLPD_MANIPULATION`). `sac`, `naive`: one recipe for every task.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import flax.struct
import gymnasium as gym
import jax
import jax.numpy as jnp
import optax
from flax.training.train_state import TrainState

from o2o.agents.base import Needs, Phase, compiled_create, register
from o2o.nets.ensemble import StateActionValue, ensemble_state, subset
from o2o.nets.mlp import Activation
from o2o.nets.policies import TanhGaussian, tanh_gaussian_sample


@dataclasses.dataclass(frozen=True)
class SACConfig:
    """SAC hyperparameters; the defaults are the RLPD reference recipe."""

    hidden_dims: tuple[int, ...] = (256, 256)
    num_critics: int = 10
    num_min_critics: int = 2  # size of the random subset whose min is the target
    target_min_weight: float = 1.0  # BCQ's clipped double-Q: w min + (1 - w) max over the subset
    critic_layer_norm: bool = True
    backup_entropy: bool = True
    actor_q: Literal["mean", "min"] = "mean"  # how the actor reduces the ensemble (RLPD: mean)
    target_entropy: float | None = None  # None: target_entropy_per_dim * |A|
    target_entropy_per_dim: float = -0.5
    diversity_weight: float = 0.0  # EDAC's eta: penalises aligned action-gradients of critics
    init_temperature: float = 1.0
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    temperature_lr: float = 3e-4
    discount: float = 0.99
    tau: float = 0.005
    batch_size: int = 256
    utd_ratio: int = 20
    offline_ratio: float = 0.5
    start_steps: int = 5000
    normalize_observations: bool = False  # states standardised by the dataset's mean and std
    # Network forms: jaxrl/RLPD's by default; `RLPD_MANIPULATION` sets seohongpark/fql's.
    activation: Activation = "relu"
    layer_norm_first: bool = True  # LayerNorm before the activation in the critics
    actor_init_scale: float = 1.0  # the actor's mean and log-std heads
    log_std_min: float = -20.0

    def __post_init__(self):
        if not 1 <= self.num_min_critics <= self.num_critics:
            raise ValueError(
                f"num_min_critics={self.num_min_critics} must lie in [1, num_critics="
                f"{self.num_critics}]"
            )
        if self.utd_ratio < 1 or self.batch_size < 1:
            raise ValueError("utd_ratio and batch_size must be at least 1")
        if self.diversity_weight < 0 or (self.diversity_weight > 0 and self.num_critics < 2):
            raise ValueError(
                f"diversity_weight={self.diversity_weight} must be >= 0, and needs num_critics >= 2"
            )
        if not 0.0 <= self.target_min_weight <= 1.0:
            raise ValueError(f"target_min_weight={self.target_min_weight} must lie in [0, 1]")


RLPD = SACConfig()
# RLPD's agent with 2 critics and UTD 1: `sac`'s defaults until 2026-12, with which the policy zoo
# (scripts/train_zoo.py) was trained, and the base of `naive`.
RLPD_2 = dataclasses.replace(RLPD, num_critics=2, utd_ratio=1, offline_ratio=0.0)
# Textbook SAC (Haarnoja et al. 2018: no LayerNorm, the actor maximises the min of 2 critics,
# target entropy -|A|) with CleanRL's critic learning rate 1e-3 (`sac_continuous_action.py`).
SAC_DEFAULT = dataclasses.replace(
    RLPD_2,
    critic_layer_norm=False,
    actor_q="min",
    target_entropy_per_dim=-1.0,
    critic_lr=1e-3,
)
# Offline SAC with nothing against overestimation but the min of 2 critics: the baseline whose
# Q-values run away on out-of-distribution actions. No LayerNorm (it bounds Q: RLPD, Ball 2023).
NAIVE = dataclasses.replace(RLPD_2, critic_layer_norm=False, offline_ratio=1.0, start_steps=0)
# SAC-N and EDAC (An et al. 2021, CORL's recipe; see the module docstring).
SAC_N = dataclasses.replace(
    NAIVE,
    hidden_dims=(256, 256, 256),
    num_critics=10,
    num_min_critics=10,
    actor_q="min",
    target_entropy_per_dim=-1.0,
    log_std_min=-5.0,  # the EDAC paper's clip, as CORL's (not SAC's -20)
)
EDAC = dataclasses.replace(SAC_N, diversity_weight=1.0)
RLPD_NAVIGATION = dataclasses.replace(
    RLPD, hidden_dims=(256, 256, 256), backup_entropy=False, num_min_critics=1
)
# The FQL paper's RLPD on OGBench manipulation (its Table 5; seohongpark/fql agents/sac.py with
# --balanced_sampling): SAC with 2 critics whose min is the target, UTD 1, no entropy backup,
# 4 x 512 GELU networks (LayerNorm after the activation in the critics), the actor's heads at
# 1/100 scale and log-std in [-5, 2], batches half offline; it acts with its policy from the
# first step.
RLPD_MANIPULATION = dataclasses.replace(
    RLPD,
    hidden_dims=(512, 512, 512, 512),
    num_critics=2,
    num_min_critics=2,
    backup_entropy=False,
    utd_ratio=1,
    start_steps=0,
    activation="gelu",
    layer_norm_first=False,
    actor_init_scale=0.01,
    log_std_min=-5.0,
)


def _ensemble(base: SACConfig, n: int, **changes) -> SACConfig:
    """`base` with n critics, the target's min over all of them."""
    return dataclasses.replace(base, num_critics=n, num_min_critics=n, **changes)


SAC_N_PRESETS = {
    "default": SAC_N,
    "hopper-medium": _ensemble(SAC_N, 500),
    "hopper-medium-replay": _ensemble(SAC_N, 200),
    "hopper-medium-expert": _ensemble(SAC_N, 200),
    **{
        f"walker2d-{level}": _ensemble(SAC_N, 20)
        for level in ("medium", "medium-replay", "medium-expert")
    },
}
EDAC_PRESETS = {
    "default": EDAC,
    **{
        f"hopper-{level}": _ensemble(EDAC, 50)
        for level in ("medium", "medium-replay", "medium-expert")
    },
    "walker2d-medium-expert": dataclasses.replace(EDAC, diversity_weight=5.0),
    "halfcheetah-medium-expert": dataclasses.replace(EDAC, diversity_weight=5.0),
}


def _norm(x: jax.Array) -> jax.Array:
    """Euclidean norm over the last axis (kept) whose gradient is 0 at x = 0, as PyTorch's
    (CORL's EDAC): jnp.linalg.norm's is NaN there, and a critic with every ReLU on a row's
    path off has a zero action-gradient, which would turn the whole critic to NaN."""
    squared = jnp.sum(x**2, axis=-1, keepdims=True)
    positive = squared > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def _mean_metrics(metrics: dict[str, jax.Array]) -> dict[str, jax.Array]:
    return {k: jnp.mean(v) for k, v in metrics.items()}


class SAC(flax.struct.PyTreeNode):
    actor: TrainState
    critic: TrainState
    target_critic_params: Any
    log_temperature: TrainState
    rng: jax.Array
    target_entropy: float = flax.struct.field(pytree_node=False)
    config: SACConfig = flax.struct.field(pytree_node=False)

    @classmethod
    @compiled_create
    def create(
        cls,
        config: SACConfig,
        obs_space: gym.spaces.Box,
        act_space: gym.spaces.Box,
        seed: int,
    ) -> SAC:
        obs = jnp.zeros((1, *obs_space.shape), jnp.float32)
        act = jnp.zeros((1, *act_space.shape), jnp.float32)
        key_actor, key_critic, rng = jax.random.split(jax.random.key(seed), 3)

        actor_def = TanhGaussian(
            act.shape[-1],
            config.hidden_dims,
            log_std_min=config.log_std_min,
            activation=config.activation,
            head_init_scale=config.actor_init_scale,
        )
        actor = TrainState.create(
            apply_fn=actor_def.apply,
            params=actor_def.init(key_actor, obs),
            tx=optax.adam(config.actor_lr),
        )
        critic_def = StateActionValue(
            config.hidden_dims,
            config.critic_layer_norm,
            config.activation,
            norm_first=config.layer_norm_first,
        )
        critic = ensemble_state(
            critic_def, key_critic, config.num_critics, optax.adam(config.critic_lr), obs, act
        )
        log_temp = TrainState.create(
            apply_fn=None,
            params={"log_temperature": jnp.log(jnp.float32(config.init_temperature))},
            tx=optax.adam(config.temperature_lr),
        )
        target_entropy = config.target_entropy
        if target_entropy is None:
            target_entropy = config.target_entropy_per_dim * act.shape[-1]
        return cls(
            actor=actor,
            critic=critic,
            target_critic_params=jax.tree.map(jnp.copy, critic.params),
            log_temperature=log_temp,
            rng=rng,
            target_entropy=float(target_entropy),
            config=config,
        )

    @property
    def temperature(self) -> jax.Array:
        return jnp.exp(self.log_temperature.params["log_temperature"])

    def _policy(self, params, observations: jax.Array, key: jax.Array):
        mean, log_std = self.actor.apply_fn(params, observations)
        return tanh_gaussian_sample(mean, log_std, key)

    def critic_loss(self, critic_params, batch, key: jax.Array):
        """E[(Q_i(s,a) - (r + gamma m (V'(s') - [alpha log pi(a'|s')])))^2], a' ~ pi(s'), with
        V' = w min_{j in M} Q'_j(s',a') + (1 - w) max_{j in M} Q'_j(s',a') over a random subset M
        (w = 1: the clipped double-Q min; BCQ uses w = 0.75)."""
        key_pi, key_subset = jax.random.split(key)
        cfg = self.config
        next_actions, next_log_probs = self._policy(
            self.actor.params, batch["next_observations"], key_pi
        )
        target_params = self.target_critic_params
        if cfg.num_min_critics < cfg.num_critics:
            target_params = subset(target_params, key_subset, cfg.num_min_critics)
        next_qs = self.critic.apply_fn(target_params, batch["next_observations"], next_actions)
        w = cfg.target_min_weight
        next_q = w * next_qs.min(0) + (1.0 - w) * next_qs.max(0)
        if cfg.backup_entropy:
            next_q = next_q - self.temperature * next_log_probs
        target = batch["rewards"] + cfg.discount * batch["masks"] * next_q
        q = self.critic.apply_fn(critic_params, batch["observations"], batch["actions"])
        loss = jnp.mean((q - jax.lax.stop_gradient(target)) ** 2)
        info = {"critic_loss": loss, "q_mean": q.mean(), "target_mean": target.mean()}
        if cfg.diversity_weight > 0:
            diversity = self.gradient_diversity(critic_params, batch)
            loss = loss + cfg.diversity_weight / cfg.num_critics * diversity
            info["diversity"] = diversity
        return loss, info

    def gradient_diversity(self, critic_params, batch) -> jax.Array:
        """EDAC's E_s,a[sum_{i != j} <g_i, g_j>] / (N - 1), g_i the unit action-gradient of
        Q_i at the dataset's (s, a): large when the critics' gradients align."""
        n = self.config.num_critics
        tile = lambda x: jnp.broadcast_to(x, (n, *x.shape))  # noqa: E731
        obs, actions = tile(batch["observations"]), tile(batch["actions"])
        grads = jax.grad(lambda a: self.critic.apply_fn.per_member(critic_params, obs, a).sum())(
            actions
        )  # [N, B, A]: member i's Q depends only on its own copy of the actions
        grads = grads / (_norm(grads) + 1e-10)
        gram = jnp.einsum("iba,jba->bij", grads, grads)
        off_diagonal = gram.sum((1, 2)) - jnp.trace(gram, axis1=1, axis2=2)
        return off_diagonal.mean() / (n - 1)

    def actor_loss(self, actor_params, batch, key: jax.Array):
        """E[alpha log pi(a|s) - agg_i Q_i(s, a)], a ~ pi(.|s); agg = mean (RLPD) or min."""
        actions, log_probs = self._policy(actor_params, batch["observations"], key)
        qs = self.critic.apply_fn(self.critic.params, batch["observations"], actions)
        q = qs.min(0) if self.config.actor_q == "min" else qs.mean(0)
        loss = jnp.mean(self.temperature * log_probs - q)
        return loss, {"actor_loss": loss, "entropy": -log_probs.mean()}

    def temperature_loss(self, params, entropy: jax.Array):
        """alpha (H(pi) - target entropy): alpha rises when entropy falls below the target."""
        temperature = jnp.exp(params["log_temperature"])
        loss = temperature * (entropy - self.target_entropy)
        return loss, {"temperature_loss": loss, "temperature": temperature}

    def update_critic(self, batch) -> tuple[SAC, dict[str, jax.Array]]:
        rng, key = jax.random.split(self.rng)
        grads, info = jax.grad(self.critic_loss, has_aux=True)(self.critic.params, batch, key)
        critic = self.critic.apply_gradients(grads=grads)
        target = optax.incremental_update(critic.params, self.target_critic_params, self.config.tau)
        return self.replace(critic=critic, target_critic_params=target, rng=rng), info

    def update_actor(self, batch) -> tuple[SAC, dict[str, jax.Array]]:
        rng, key = jax.random.split(self.rng)
        grads, info = jax.grad(self.actor_loss, has_aux=True)(self.actor.params, batch, key)
        actor = self.actor.apply_gradients(grads=grads)
        entropy = jax.lax.stop_gradient(info["entropy"])
        grads, temp_info = jax.grad(self.temperature_loss, has_aux=True)(
            self.log_temperature.params, entropy
        )
        log_temp = self.log_temperature.apply_gradients(grads=grads)
        return self.replace(actor=actor, log_temperature=log_temp, rng=rng), info | temp_info

    def update(self, batch) -> tuple[SAC, dict[str, jax.Array]]:
        """`utd` critic updates (scanned over the leading axis), then actor and temperature."""
        agent, critic_info = jax.lax.scan(lambda a, b: a.update_critic(b), self, batch)
        agent, actor_info = agent.update_actor(jax.tree.map(lambda x: x[-1], batch))
        return agent, _mean_metrics(critic_info) | actor_info

    def sample_actions(
        self, observations: jax.Array, key: jax.Array, deterministic: bool = False
    ) -> jax.Array:
        mean, log_std = self.actor.apply_fn(self.actor.params, observations)
        if deterministic:
            return jnp.tanh(mean)
        return tanh_gaussian_sample(mean, log_std, key)[0]

    def q_values(self, observations: jax.Array, actions: jax.Array) -> jax.Array:
        """Mean over the ensemble: the estimate the actor maximises."""
        return self.critic.apply_fn(self.critic.params, observations, actions).mean(0)

    def on_switch(self, config: Any = None) -> SAC:
        return self

    def needs(self, phase: Phase) -> Needs:
        """The same in both phases; the actor is a tanh-Gaussian, the zoo's policy format."""
        return Needs(
            normalize_observations=self.config.normalize_observations,
            policy_format="tanh_gaussian",
        )


register(
    "rlpd",
    SAC,
    {"locomotion": RLPD, "navigation": RLPD_NAVIGATION, "manipulation": RLPD_MANIPULATION},
    "SAC with the RLPD recipe: 10 LayerNorm critics, UTD 20, 50/50 data",
)
register("sac", SAC, SAC_DEFAULT, "soft actor-critic: 2 critics, UTD 1, online data only")
register("naive", SAC, NAIVE, "offline SAC, no regularisation: the overestimation baseline")
register("sac-n", SAC, SAC_N_PRESETS, "SAC-N: N critics (CORL's per dataset), min over all")
register("edac", SAC, EDAC_PRESETS, "EDAC: SAC-N plus the ensemble-gradient diversity term")
