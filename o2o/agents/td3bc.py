"""TD3+BC (Fujimoto & Gu 2021), and ReBRAC (Tarasov et al. 2023) as a preset of the same agent.

TD3 core, as in sfujim/TD3_BC and CORL `td3_bc.py`: a deterministic tanh actor pi; two critics;
target policy smoothing a' = clip(pi'(s') + clip(0.2 eps, -0.5, 0.5), -1, 1); target
y = r + gamma m min_j Q'_j(s', a'); the actor and both target networks (tau 0.005) are updated
once every `policy_freq` (2) critic updates, after the critic, with the updated critic.
TD3+BC's actor loss is -lambda Q_1(s, pi(s)) + (pi(s) - a)^2, lambda = alpha / mean|Q_1(s, pi(s))|
(stop-gradient), alpha 2.5; (256, 256) MLPs, learning rates 3e-4, batch 256, gamma 0.99.

ReBRAC (`REBRAC`, CORL `offline/rebrac.py`, `finetune/rebrac.py`) generalises the penalties:
- actor: mean(beta_actor ||pi(s) - a||^2 - min_j Q_j(s, pi(s)) / mean|min_j Q_j|), i.e. alpha 1,
  the min over critics and the squared norm summed over action dimensions;
- critic: the bootstrap is penalised, y = r + gamma m (min_j Q'_j(s', a') - beta_critic
  ||a' - a'_D||^2), where a'_D is the dataset's action at s'. That needs batch key
  `next_actions`, which `update` requires (with a clear error) whenever `critic_bc` != 0;
- LayerNorm critics, 3 x 256 MLPs, learning rates 1e-3, batch 1024. The defaults beta_actor 0.001,
  beta_critic 0.01 are d3rlpy's and CORL's halfcheetah-medium-v2 values; CORL tunes them per
  dataset (hopper-medium 0.01 / 0.01, walker2d-medium 0.05 / 0.1; AntMaze: batch 256, actor lr
  3e-4, critic lr 5e-5, gamma 0.999, e.g. large-play 0.002 / 0.001).
- fine-tuning (CORL `finetune/rebrac.py`): batches half offline (`offline_ratio` 0.5); at the
  switch the critic penalty is dropped (`online_critic_bc` 0). With `online_critic_bc` != 0
  online batches need `next_actions` too: the dataset's for offline rows, and for online rows
  the agent's own action at s' drawn when the transition is stored (CORL's online buffer holds
  the actor's noisy action at s', not the action later taken there). A run with no offline
  phase is never switched, so where the two penalties differ `o2o train` asks which one
  applies (`--agent.critic-bc`) instead of starting.
- Presets: CORL's offline coefficients per locomotion dataset (`configs/offline/rebrac/
  TASK/LEVEL_v2.yaml`, beta_actor / beta_critic), registered under the dataset's name:

      level           halfcheetah      hopper         walker2d
      random          0.001 / 0.1      0.001 / 0.01   0.01 / 0
      medium          0.001 / 0.01     0.01 / 0.01    0.05 / 0.1
      medium-replay   0.01 / 0.001     0.05 / 0.5     0.05 / 0.01
      medium-expert   0.01 / 0.1       0.1 / 0.01     0.01 / 0.01
      expert          0.01 / 0.01      0.1 / 0.1      0.01 / 0.5

  every other field as `REBRAC` (`locomotion`: the halfcheetah-medium values). `navigation`
  is CORL's fine-tuning antmaze-umaze config: batch 256, actor lr 3e-4, critic lr 5e-5,
  gamma 0.999, beta 0.003 / 0.002. Its reward x 100 is not applied: o2o's PointMaze rewards
  are the registry's r - 1 for every agent. `manipulation` and the OGBench suites' names are
  the FQL paper's ReBRAC (its Tables 5-6, seohongpark/fql `agents/rebrac.py`): 4 x 512 GELU
  networks, LayerNorm after each activation in the critics, the actor's last layer
  initialised at 1/100 scale, lr 3e-4, batch 256, raw observations, the penalties kept online
  without decay, exploration noise 0.2 (the reference clips it at 0.5; o2o does not), and
  beta_actor / beta_critic 1 / 0 cube-single, 0.1 / 0 cube-double, 0.1 / 0.01 scene (the
  family's default), 0.3 / 0.01 puzzles. Its critic loss averages over the two critics where
  CORL's sums them: a constant factor that Adam's steps do not see.

Not in the agent:
- Observation normalisation by the dataset's mean and std (TD3+BC's recipe, on in CORL
  `td3_bc.py`; off in ReBRAC, as CORL's `normalize_states`) is a data-layer concern:
  `normalize_observations` asks the pipeline to apply it (`learning_task`).
- Reward transforms (CORL ReBRAC scales AntMaze rewards by 100) belong to the task registry.
- ReBRAC's online decay of beta_actor (CORL `finetune/rebrac.py`): max(0.5, 1 - k / K) after
  k online updates; K (`online_bc_decay_steps`) is CORL's 1M online updates in the preset, so
  shorter fine-tuning budgets should pass theirs (`--agent.online-bc-decay-steps`).

Deviations: o2o's MLP (Xavier-uniform init; `weight_init="torch"` gives PyTorch's) instead of
PyTorch's default init (TD3+BC, d3rlpy) or ReBRAC's EDAC-style init; ReBRAC's critics put LayerNorm
after the ReLU, as CORL's (`layer_norm_first` False; RLPD's order, before it, is the field's
default). The delayed update follows sfujim's counter (the actor steps on critic updates 2, 4, ...;
CORL's ReBRAC on 1, 3, ...). ReBRAC explores online with TD3's noise 0.1, not CORL's `expl_noise` 0.
Several minibatches per call run in `jax.lax.scan`; the delay is a `jax.lax.cond` on the critic's
step count, whose skip branch evaluates the actor loss without a gradient, so actor metrics are
defined on every step.
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

from o2o.agents.base import Needs, Phase, compiled_create, gradient_step, register
from o2o.nets.ensemble import StateActionValue, ensemble_state
from o2o.nets.mlp import MLP, Activation, Init


@dataclasses.dataclass(frozen=True)
class TD3BCConfig:
    """TD3+BC / ReBRAC hyperparameters; the defaults are the TD3+BC reference recipe."""

    hidden_dims: tuple[int, ...] = (256, 256)  # actor and critics
    critic_layer_norm: bool = False
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    discount: float = 0.99
    tau: float = 0.005
    policy_noise: float = 0.2  # std of the target policy smoothing noise
    noise_clip: float = 0.5
    policy_freq: int = 2  # critic updates per actor and target update
    alpha: float = 2.5  # lambda = alpha / mean|Q|
    actor_bc: float = 1.0  # beta_actor
    critic_bc: float = 0.0  # beta_critic; non-zero needs batch["next_actions"]
    online_critic_bc: float = 0.0  # beta_critic after `on_switch`
    online_bc_decay_steps: int | None = None  # beta_actor decays over these online updates
    online_bc_min_decay: float = 0.5  # ... linearly from 1x to this fraction, then stays
    bc_reduction: Literal["mean", "sum"] = "mean"  # over action dims: TD3+BC mean, ReBRAC sum
    actor_q: Literal["q1", "min"] = "q1"  # the Q the actor maximises: TD3+BC Q_1, ReBRAC min
    exploration_noise: float = 0.1  # std of the Gaussian added to online actions
    batch_size: int = 256
    utd_ratio: int = 1
    offline_ratio: float = 1.0
    start_steps: int = 0
    normalize_observations: bool = True  # states standardised by the dataset's mean and std
    # Network forms: TD3+BC's and CORL's by default; the `manipulation` presets set
    # seohongpark/fql's (GELU, LayerNorm after it, the actor's last layer at 1/100 scale).
    activation: Activation = "relu"
    layer_norm_first: bool = True  # LayerNorm before the activation in the critics
    actor_init_scale: float = 1.0
    # Initial weights: jaxrl's Xavier-uniform ("xavier") or PyTorch's nn.Linear ("torch":
    # uniform in +-1/sqrt(fan_in), biases too), as d3rlpy's TD3+BC and ReBRAC.
    weight_init: Init = "xavier"

    def __post_init__(self):
        if self.bc_reduction not in ("mean", "sum"):
            raise ValueError(f"bc_reduction='{self.bc_reduction}' must be 'mean' or 'sum'")
        if self.actor_q not in ("q1", "min"):
            raise ValueError(f"actor_q='{self.actor_q}' must be 'q1' or 'min'")
        if min(self.utd_ratio, self.batch_size, self.policy_freq) < 1:
            raise ValueError("utd_ratio, batch_size and policy_freq must be at least 1")


TD3BC_DEFAULT = TD3BCConfig()
REBRAC = TD3BCConfig(
    hidden_dims=(256, 256, 256),
    critic_layer_norm=True,
    actor_lr=1e-3,
    critic_lr=1e-3,
    alpha=1.0,
    actor_bc=0.001,
    critic_bc=0.01,
    bc_reduction="sum",
    actor_q="min",
    batch_size=1024,
    offline_ratio=0.5,
    normalize_observations=False,
    online_bc_decay_steps=1_000_000,
    layer_norm_first=False,  # CORL's critics: Linear, ReLU, LayerNorm
)
REBRAC_NAVIGATION = dataclasses.replace(
    REBRAC,
    batch_size=256,
    actor_lr=3e-4,
    critic_lr=5e-5,
    discount=0.999,
    actor_bc=0.003,
    critic_bc=0.002,
)
# CORL's (beta_actor, beta_critic) per locomotion dataset (see the module notes).
REBRAC_COEFFICIENTS = {
    "halfcheetah-random": (0.001, 0.1),
    "halfcheetah-medium": (0.001, 0.01),
    "halfcheetah-medium-replay": (0.01, 0.001),
    "halfcheetah-medium-expert": (0.01, 0.1),
    "halfcheetah-expert": (0.01, 0.01),
    "hopper-random": (0.001, 0.01),
    "hopper-medium": (0.01, 0.01),
    "hopper-medium-replay": (0.05, 0.5),
    "hopper-medium-expert": (0.1, 0.01),
    "hopper-expert": (0.1, 0.1),
    "walker2d-random": (0.01, 0.0),
    "walker2d-medium": (0.05, 0.1),
    "walker2d-medium-replay": (0.05, 0.01),
    "walker2d-medium-expert": (0.01, 0.01),
    "walker2d-expert": (0.01, 0.5),
}
# The FQL paper's ReBRAC on OGBench manipulation (its Tables 5-6; seohongpark/fql
# agents/rebrac.py): 4 x 512 GELU networks, LayerNorm after each activation in the critics,
# lr 3e-4, batch 256, raw observations, and (beta_actor, beta_critic) per suite, kept online.
REBRAC_MANIPULATION = dataclasses.replace(
    REBRAC,
    hidden_dims=(512, 512, 512, 512),
    actor_lr=3e-4,
    critic_lr=3e-4,
    batch_size=256,
    actor_bc=0.1,  # scene
    critic_bc=0.01,
    online_critic_bc=0.01,
    online_bc_decay_steps=None,
    exploration_noise=0.2,
    activation="gelu",
    layer_norm_first=False,
    actor_init_scale=0.01,
)
REBRAC_SUITES = {
    suite: dataclasses.replace(
        REBRAC_MANIPULATION, actor_bc=actor_bc, critic_bc=critic_bc, online_critic_bc=critic_bc
    )
    for suite, (actor_bc, critic_bc) in {
        "cube-single": (1.0, 0.0),
        "cube-double": (0.1, 0.0),
        "puzzle-3x3": (0.3, 0.01),
        "puzzle-4x4": (0.3, 0.01),
    }.items()
}
REBRAC_PRESETS = {
    "locomotion": REBRAC,
    "navigation": REBRAC_NAVIGATION,
    "manipulation": REBRAC_MANIPULATION,
    **REBRAC_SUITES,
    **{
        dataset: dataclasses.replace(REBRAC, actor_bc=actor_bc, critic_bc=critic_bc)
        for dataset, (actor_bc, critic_bc) in REBRAC_COEFFICIENTS.items()
    },
}


class TD3BC(flax.struct.PyTreeNode):
    actor: TrainState
    critic: TrainState
    target_actor_params: Any
    target_critic_params: Any
    rng: jax.Array
    switch_step: jax.Array  # critic updates done at the switch; -1 before it (BC decay)
    config: TD3BCConfig = flax.struct.field(pytree_node=False)

    @classmethod
    @compiled_create
    def create(
        cls,
        config: TD3BCConfig,
        obs_space: gym.spaces.Box,
        act_space: gym.spaces.Box,
        seed: int,
    ) -> TD3BC:
        obs = jnp.zeros((1, *obs_space.shape), jnp.float32)
        act = jnp.zeros((1, *act_space.shape), jnp.float32)
        key_actor, key_critic, rng = jax.random.split(jax.random.key(seed), 3)

        actor_def = MLP(  # pre-tanh; see `_policy`
            (*config.hidden_dims, act.shape[-1]),
            activation=config.activation,
            output_init_scale=config.actor_init_scale,
            weight_init=config.weight_init,
        )
        actor_params = actor_def.init(key_actor, obs)
        actor = TrainState.create(
            apply_fn=actor_def.apply, params=actor_params, tx=optax.adam(config.actor_lr)
        )
        critic_def = StateActionValue(
            config.hidden_dims,
            config.critic_layer_norm,
            config.activation,
            norm_first=config.layer_norm_first,
            weight_init=config.weight_init,
        )
        critic = ensemble_state(critic_def, key_critic, 2, optax.adam(config.critic_lr), obs, act)
        return cls(
            actor=actor,
            critic=critic,
            target_actor_params=jax.tree.map(jnp.copy, actor_params),
            target_critic_params=jax.tree.map(jnp.copy, critic.params),
            rng=rng,
            switch_step=jnp.int32(-1),
            config=config,
        )

    @property
    def actor_bc(self) -> jax.Array:
        """beta_actor: the config's, times ReBRAC's online decay max(min, 1 - k / K) after k
        online updates of K (`online_bc_decay_steps`; CORL `min_decay_coef`)."""
        cfg = self.config
        if cfg.online_bc_decay_steps is None:
            return jnp.float32(cfg.actor_bc)
        done = jnp.maximum(self.critic.step - self.switch_step, 0)
        decay = jnp.maximum(cfg.online_bc_min_decay, 1.0 - done / cfg.online_bc_decay_steps)
        return cfg.actor_bc * jnp.where(self.switch_step < 0, 1.0, decay)

    def _policy(self, params, observations: jax.Array) -> jax.Array:
        return jnp.tanh(self.actor.apply_fn(params, observations))

    def bc_penalty(self, actions: jax.Array, data_actions: jax.Array) -> jax.Array:
        """(a - a_D)^2 per row, averaged (TD3+BC) or summed (ReBRAC) over action dimensions."""
        sq = (actions - data_actions) ** 2
        return sq.mean(-1) if self.config.bc_reduction == "mean" else sq.sum(-1)

    def critic_loss(
        self, critic_params, batch: dict[str, jax.Array], noise: jax.Array
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """sum_j E[(Q_j(s, a) - y)^2], y = r + gamma m (min_j Q'_j(s', a') - beta_c pen(a', a'_D)),
        a' = clip(pi'(s') + clip(sigma noise, -c, c), -1, 1), noise ~ N(0, I) given."""
        cfg = self.config
        smoothing = jnp.clip(cfg.policy_noise * noise, -cfg.noise_clip, cfg.noise_clip)
        next_obs = batch["next_observations"]
        next_actions = jnp.clip(self._policy(self.target_actor_params, next_obs) + smoothing, -1, 1)
        next_q = self.critic.apply_fn(self.target_critic_params, next_obs, next_actions).min(0)
        if cfg.critic_bc:
            next_q = next_q - cfg.critic_bc * self.bc_penalty(next_actions, batch["next_actions"])
        target = batch["rewards"] + cfg.discount * batch["masks"] * next_q
        q = self.critic.apply_fn(critic_params, batch["observations"], batch["actions"])
        loss = jnp.mean((q - target) ** 2, axis=-1).sum()
        return loss, {"critic_loss": loss, "q_mean": q.mean(), "target_mean": target.mean()}

    def actor_loss(
        self, actor_params, batch: dict[str, jax.Array]
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """E[-lambda Q(s, pi(s)) + beta_a pen(pi(s), a)], lambda = alpha / mean|Q| (no gradient);
        Q is Q_1 (TD3+BC) or min_j Q_j (ReBRAC)."""
        obs, data_actions = batch["observations"], batch["actions"]
        actions = self._policy(actor_params, obs)
        qs = self.critic.apply_fn(self.critic.params, obs, actions)
        q = qs[0] if self.config.actor_q == "q1" else qs.min(0)
        lam = jax.lax.stop_gradient(self.config.alpha / jnp.abs(q).mean())
        loss = jnp.mean(-lam * q + self.actor_bc * self.bc_penalty(actions, data_actions))
        bc_mse = jnp.mean((actions - data_actions) ** 2)
        info = {"actor_loss": loss, "bc_mse": bc_mse, "lambda": lam, "actor_bc": self.actor_bc}
        return loss, info

    def update_critic(self, batch: dict[str, jax.Array]) -> tuple[TD3BC, dict[str, jax.Array]]:
        rng, key = jax.random.split(self.rng)
        noise = jax.random.normal(key, batch["actions"].shape)
        critic, info = gradient_step(self.critic, self.critic_loss, batch, noise)
        return self.replace(critic=critic, rng=rng), info

    def update_actor(self, batch: dict[str, jax.Array]) -> tuple[TD3BC, dict[str, jax.Array]]:
        """One actor step, then the soft update of both target networks."""
        actor, info = gradient_step(self.actor, self.actor_loss, batch)
        tau = self.config.tau
        return self.replace(
            actor=actor,
            target_actor_params=optax.incremental_update(
                actor.params, self.target_actor_params, tau
            ),
            target_critic_params=optax.incremental_update(
                self.critic.params, self.target_critic_params, tau
            ),
        ), info

    def skip_actor(self, batch: dict[str, jax.Array]) -> tuple[TD3BC, dict[str, jax.Array]]:
        """No actor or target step; the actor loss is still evaluated, for the metrics."""
        return self, self.actor_loss(self.actor.params, batch)[1]

    def update_step(self, batch: dict[str, jax.Array]) -> tuple[TD3BC, dict[str, jax.Array]]:
        """A critic step; on every `policy_freq`-th critic step also the actor and targets."""
        agent, critic_info = self.update_critic(batch)
        delayed = agent.critic.step % self.config.policy_freq == 0
        agent, actor_info = jax.lax.cond(
            delayed, type(self).update_actor, type(self).skip_actor, agent, batch
        )
        return agent, critic_info | actor_info

    def update(self, batch: dict[str, jax.Array]) -> tuple[TD3BC, dict[str, jax.Array]]:
        """One step per minibatch on the leading axis (scanned); metrics averaged over them."""
        if self.config.critic_bc and "next_actions" not in batch:
            raise ValueError(
                f"critic_bc={self.config.critic_bc} (ReBRAC's critic penalty) needs "
                "batch['next_actions'], the dataset's action at next_observations; have the "
                "data layer provide it, or set critic_bc=0"
            )
        agent, info = jax.lax.scan(lambda a, b: a.update_step(b), self, batch)
        return agent, jax.tree.map(jnp.mean, info)

    def sample_actions(
        self, observations: jax.Array, key: jax.Array, deterministic: bool = False
    ) -> jax.Array:
        """pi(s), plus N(0, exploration_noise^2) clipped to [-1, 1] unless deterministic."""
        actions = self._policy(self.actor.params, observations)
        if deterministic:
            return actions
        noise = self.config.exploration_noise * jax.random.normal(key, actions.shape)
        return jnp.clip(actions + noise, -1.0, 1.0)

    def q_values(self, observations: jax.Array, actions: jax.Array) -> jax.Array:
        """min_j Q_j(s, a): the clipped double-Q estimate the targets bootstrap from."""
        return self.critic.apply_fn(self.critic.params, observations, actions).min(0)

    def on_switch(self, config: Any = None) -> TD3BC:
        """Online, the critic penalty becomes `online_critic_bc` (ReBRAC fine-tuning: 0) and,
        with `online_bc_decay_steps`, the actor's starts decaying (see `actor_bc`). `config` is
        unused: the agent's own says."""
        # A copy: the online update donates the agent, and no two leaves may share a buffer.
        agent = self.replace(switch_step=jnp.array(self.critic.step, jnp.int32))
        if self.config.critic_bc == self.config.online_critic_bc:
            return agent
        return agent.replace(
            config=dataclasses.replace(self.config, critic_bc=self.config.online_critic_bc)
        )

    def needs(self, phase: Phase) -> Needs:
        """`next_actions` in the phases whose critic penalty is on (ReBRAC offline)."""
        cfg = self.config
        critic_bc = cfg.critic_bc if phase == "offline" else cfg.online_critic_bc
        return Needs(
            batch_fields=frozenset({"next_actions"} if critic_bc else ()),
            normalize_observations=cfg.normalize_observations,
        )


register("td3bc", TD3BC, TD3BC_DEFAULT, "TD3+BC: TD3 with a normalised-Q + MSE-to-data actor")
register("rebrac", TD3BC, REBRAC_PRESETS, "ReBRAC: TD3+BC with LayerNorm, actor and critic BC")
