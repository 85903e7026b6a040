"""Conservative Q-learning (Kumar, Zhou, Tucker, Levine 2020): continuous CQL(H) on SAC, as in
young-geng/JaxCQL (`conservative_sac.py`, the copy Cal-QL builds on) and CORL's `cql.py`.

CQL is SAC whose critics also push down a soft maximum of Q over actions the data does not
contain and push up Q on the data's actions. For each critic i, on a batch of (s, a, r, s', m):

    L_i = E[(Q_i(s, a) - y)^2] + w E_s[clip(C_i(s) - Q_i(s, a), lo, hi)]           (sum over i)
    y   = r + gamma m min_j Q'_j(s', a'),  a' ~ pi(.|s')   (+ optional -alpha log pi(a'|s'))
    C_i(s) = T logsumexp_k(x_k / T) over 3N proposals, with importance weights:
        x = Q_i(s, u_k) - log 0.5^|A|,          u_k ~ U[-1, 1]^|A|   (uniform density 0.5^|A|)
            Q_i(s, a'_k) - log pi(a'_k|s'),     a'_k ~ pi(.|s')
            Q_i(s, a_k)  - log pi(a_k|s),       a_k ~ pi(.|s),       k = 1..N
    (without importance sampling: the raw Q-values of the 3N proposals and of a.)

Q at the proposals is always taken at s, also for actions drawn at s': the reference code
(JaxCQL, CORL, and the original CQL's `_get_tensor_values(obs, new_next_actions)`) does so.
`cql_max_target_backup` draws N actions a'_k and backs up max_k min_j Q'_j(s', a'_k).
The weight w is `cql_alpha`; with `cql_lagrange` the term becomes alpha' cql_alpha (gap - g),
where alpha' = clip(exp(log alpha'), 0, 1e6) is learned by minimising -alpha' cql_alpha (gap - g)
(gap: the clipped difference averaged over critics), so alpha' grows while the gap exceeds g.
The actor and temperature are SAC's: minimise E[alpha log pi(a|s) - min_i Q_i(s, a)], alpha tuned
towards entropy -|A|. Each minibatch is one joint step: every loss takes its gradient at the
same (pre-step) parameters, as the reference's single multi-gradient step; minibatches on the
leading axis run in `jax.lax.scan`.

Recipe (`CQL_LOCOMOTION`: `get_default_config` and main flags of Cal-QL's JaxCQL): 2 critics,
(256, 256) MLPs, actor and temperature lr 1e-4, critic lr 3e-4, gamma 0.99, tau 5e-3, batch 256,
cql_alpha 5, N = 10, importance sampling, T = 1, no clipping, initial temperature 1, no entropy
backup; no max backup (young-geng/JaxCQL and CORL's offline default; Cal-QL's copy defaults to
it). `CQL_ANTMAZE` (Cal-QL `scripts/run_antmaze.sh`): Lagrange with g = 0.8, max backup, 4x256
networks; its reward rescaling 10 r - 5 belongs to the task registry, not the agent. The
registry names them `locomotion` and `navigation` (PointMaze), and `o2o train` picks by task.
`CQL_MANIPULATION` and `CQL_SUITES` are Cal-QL's on OGBench manipulation (see `calql.py`); there
the reward scale 10 is the agent's (`reward_scale`), as only Cal-QL's runs scale rewards.

Choices and deviations:
- Actor lr 1e-4 as Cal-QL's fork of JaxCQL and CORL's fine-tuning CQL; young-geng's JaxCQL
  uses 3e-4 (actor and temperature), CORL's offline `cql.py` 3e-5.
- Hidden (256, 256) as JaxCQL for locomotion (CORL: 3x256). o2o's SAC builds actor and critic
  from one `hidden_dims`, so the antmaze preset's actor is 4x256 too (Cal-QL: 256-256).
- Temperature: SAC's loss alpha (H - target) rather than the reference's log alpha (H - target):
  same sign and fixed point; Adam makes the step size nearly independent of that scale.
- Policy head and init: o2o's TanhGaussian (separate mean and log-std heads, Xavier init,
  log-std in [-20, 2]), not the reference's one head at 1/100 scale with a trainable log-std
  multiplier and offset (1 and -1 at the start), nor the orthogonal init of CORL and of Cal-QL's
  main. The critics' output layer is Xavier-uniform; JaxCQL scales its variance by 1/100.
- CORL's hopper-medium config sets cql_alpha 10 and normalises states and rewards; o2o follows
  JaxCQL (5, neither).
- `offline_ratio` 0.5 online, Cal-QL's `mixing_ratio` for CQL and Cal-QL fine-tuning (the
  offline phase samples only the dataset whatever the ratio).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import flax.struct
import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training.train_state import TrainState

from o2o.agents.base import Needs, Phase, compiled_create, register, scan_update_steps
from o2o.agents.sac import SAC, SACConfig

MAX_ALPHA_PRIME = 1e6  # the reference's clip of exp(log alpha')


@dataclasses.dataclass(frozen=True)
class CQLConfig(SACConfig):
    """CQL hyperparameters; the defaults are the reference locomotion recipe (JaxCQL)."""

    hidden_dims: tuple[int, ...] = (256, 256)
    num_critics: int = 2
    num_min_critics: int = 2  # must equal num_critics: the target is the min over all
    critic_layer_norm: bool = False
    backup_entropy: bool = False
    actor_q: Literal["mean", "min"] = "min"
    target_entropy: float | None = None  # None: -|A| (the CQL reference; SAC's None is -|A|/2)
    actor_lr: float = 1e-4
    critic_lr: float = 3e-4
    temperature_lr: float = 1e-4  # the reference tunes alpha at the policy learning rate
    utd_ratio: int = 1
    offline_ratio: float = 0.5
    start_steps: int = 0
    cql_alpha: float = 5.0
    cql_n_actions: int = 10  # N: proposals per state from each of U, pi(.|s), pi(.|s')
    cql_importance_sample: bool = True
    cql_temp: float = 1.0
    cql_lagrange: bool = False
    cql_target_action_gap: float = 1.0  # g, read only with cql_lagrange
    cql_max_target_backup: bool = False
    cql_clip_diff_min: float = -np.inf
    cql_clip_diff_max: float = np.inf
    cql_alpha_online: float | None = None  # cql_alpha from the switch on (CORL); None: keep
    reward_scale: float = 1.0  # rewards times this after the task's transform (Cal-QL's flag)

    def __post_init__(self):
        super().__post_init__()
        if self.num_min_critics != self.num_critics or self.target_min_weight != 1.0:
            raise ValueError(
                f"num_min_critics={self.num_min_critics} must equal num_critics="
                f"{self.num_critics} and target_min_weight={self.target_min_weight} be 1: "
                "CQL's target is the min over all target critics"
            )
        if self.cql_n_actions < 1 or self.cql_temp <= 0:
            raise ValueError(
                f"cql_n_actions={self.cql_n_actions} must be at least 1 and "
                f"cql_temp={self.cql_temp} positive"
            )
        if self.cql_clip_diff_min > self.cql_clip_diff_max:
            raise ValueError("cql_clip_diff_min must not exceed cql_clip_diff_max")


CQL_LOCOMOTION = CQLConfig()
CQL_ANTMAZE = dataclasses.replace(
    CQL_LOCOMOTION,
    hidden_dims=(256, 256, 256, 256),
    cql_lagrange=True,
    cql_target_action_gap=0.8,
    cql_max_target_backup=True,
)
# The FQL paper's Cal-QL on OGBench manipulation (its App. E.2 and Table 6, run with the official
# Cal-QL code): 4 x 256 networks, rewards x 10, a fixed penalty weight (0.01 cube-double and
# scene, 0.003 puzzle-4x4), the max over 10 actions in the target, importance sampling, 50/50
# online batches. The paper has no value for cube-single or puzzle-3x3: they take 0.01.
CQL_MANIPULATION = dataclasses.replace(
    CQL_LOCOMOTION,
    hidden_dims=(256, 256, 256, 256),
    cql_alpha=0.01,
    cql_max_target_backup=True,
    reward_scale=10.0,
)
CQL_SUITES = {"puzzle-4x4": dataclasses.replace(CQL_MANIPULATION, cql_alpha=0.003)}


def conservative_gap(
    q_data: jax.Array, q_ood: jax.Array, log_density: jax.Array, config: CQLConfig
) -> tuple[jax.Array, jax.Array]:
    """Per critic E_s[clip(C_i(s) - Q_i(s, a), lo, hi)], and C_i(s) (see the module notes).

    q_data: [critics, B] at the data's actions; q_ood: [critics, B, 3N] at the proposals;
    log_density: [B, 3N], the log-density each proposal was drawn with.
    """
    if config.cql_importance_sample:
        logits = q_ood - log_density
    else:
        logits = jnp.concatenate([q_ood, q_data[..., None]], axis=-1)
    ood = config.cql_temp * jax.nn.logsumexp(logits / config.cql_temp, axis=-1)
    diff = jnp.clip(ood - q_data, config.cql_clip_diff_min, config.cql_clip_diff_max)
    return diff.mean(-1), ood


def _repeat(x: jax.Array, n: int) -> jax.Array:
    """[B, d] -> [B, n, d]: each row n times, for n sampled actions per state."""
    return jnp.broadcast_to(x[:, None], (x.shape[0], n, x.shape[-1]))


class CQL(SAC):
    cql_alpha: jax.Array  # a pytree leaf, so changing it at the switch does not recompile
    log_alpha_prime: TrainState | None  # the Lagrange multiplier; None without cql_lagrange
    config: CQLConfig = flax.struct.field(pytree_node=False)

    @classmethod
    @compiled_create
    def create(
        cls,
        config: CQLConfig,
        obs_space: gym.spaces.Box,
        act_space: gym.spaces.Box,
        seed: int,
    ) -> CQL:
        sac = SAC.create(config, obs_space, act_space, seed)
        fields = {f.name: getattr(sac, f.name) for f in dataclasses.fields(SAC)}
        if config.target_entropy is None:
            fields["target_entropy"] = -float(act_space.shape[-1])
        log_alpha_prime = None
        if config.cql_lagrange:
            log_alpha_prime = TrainState.create(
                apply_fn=None,
                params={"log_alpha_prime": jnp.float32(1.0)},  # the reference's Scalar(1.0)
                tx=optax.adam(config.critic_lr),
            )
        return cls(
            **fields, cql_alpha=jnp.float32(config.cql_alpha), log_alpha_prime=log_alpha_prime
        )

    def needs(self, phase: Phase) -> Needs:
        """SAC's, with the rewards' constant scale (`reward_scale`)."""
        return dataclasses.replace(super().needs(phase), reward_scale=self.config.reward_scale)

    @property
    def cql_weight(self) -> jax.Array:
        """w: cql_alpha, times alpha' = clip(exp(log alpha'), 0, 1e6) under Lagrange."""
        if not self.config.cql_lagrange:
            return self.cql_alpha
        alpha_prime = jnp.exp(self.log_alpha_prime.params["log_alpha_prime"])
        return self.cql_alpha * jnp.clip(alpha_prime, 0.0, MAX_ALPHA_PRIME)

    def _sample(
        self, observations: jax.Array, key: jax.Array, n: int
    ) -> tuple[jax.Array, jax.Array]:
        """n actions per state from pi and their log-densities: [B, n, |A|], [B, n]."""
        return self._policy(self.actor.params, _repeat(observations, n), key)

    def td_target(self, batch: dict[str, jax.Array], key: jax.Array) -> jax.Array:
        """y = r + gamma m max_k min_j Q'_j(s', a'_k) [- alpha log pi(a'_k|s')], a'_k ~ pi(.|s');
        k ranges over N samples with `cql_max_target_backup`, else over one."""
        cfg = self.config
        n = cfg.cql_n_actions if cfg.cql_max_target_backup else 1
        next_obs = batch["next_observations"]
        next_actions, next_log_probs = self._sample(next_obs, key, n)
        next_q = self.critic.apply_fn(
            self.target_critic_params, _repeat(next_obs, n), next_actions
        ).min(0)
        best = jnp.argmax(next_q, axis=-1)[:, None]
        next_q = jnp.take_along_axis(next_q, best, axis=-1)[:, 0]
        if cfg.backup_entropy:
            next_q -= self.temperature * jnp.take_along_axis(next_log_probs, best, axis=-1)[:, 0]
        return batch["rewards"] + cfg.discount * batch["masks"] * next_q

    def critic_loss(
        self, critic_params: Any, batch: dict[str, jax.Array], key: jax.Array
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """sum_i E[(Q_i(s,a) - y)^2] + w (gap_i [- g under Lagrange]); see the module notes."""
        cfg = self.config
        key_target, key_rand, key_pi, key_next_pi = jax.random.split(key, 4)
        obs, actions = batch["observations"], batch["actions"]
        (batch_size, action_dim), n = actions.shape, cfg.cql_n_actions
        target = self.td_target(batch, key_target)

        random_actions = jax.random.uniform(
            key_rand, (batch_size, n, action_dim), minval=-1.0, maxval=1.0
        )
        pi_actions, pi_log_probs = self._sample(obs, key_pi, n)
        next_pi_actions, next_pi_log_probs = self._sample(
            batch["next_observations"], key_next_pi, n
        )
        uniform_log_density = jnp.full((batch_size, n), action_dim * np.log(0.5), jnp.float32)
        proposals = jnp.concatenate([random_actions, pi_actions, next_pi_actions], axis=1)
        log_density = jnp.concatenate([uniform_log_density, pi_log_probs, next_pi_log_probs], 1)

        q_data = self.critic.apply_fn(critic_params, obs, actions)
        q_ood = self.critic.apply_fn(critic_params, _repeat(obs, 3 * n), proposals)
        q_pi, bound_info = self.bound_policy_values(q_ood[..., n:], batch)
        q_ood = jnp.concatenate([q_ood[..., :n], q_pi], axis=-1)
        gap, ood = conservative_gap(q_data, q_ood, log_density, cfg)
        td = jnp.mean((q_data - target) ** 2, axis=-1)
        penalty = self.cql_weight * (gap - cfg.cql_target_action_gap if cfg.cql_lagrange else gap)
        loss = jnp.sum(td + penalty)
        return loss, {
            "critic_loss": loss,
            "td_loss": td.mean(),
            "cql_penalty": penalty.mean(),
            "cql_weight": self.cql_weight,
            "cql_gap": gap.mean(),
            "cql_ood_q": ood.mean(),
            "cql_data_q": q_data.mean(),
            "cql_rand_q": q_ood[..., :n].mean(),
            "cql_pi_q": q_ood[..., n : 2 * n].mean(),
            "target_mean": target.mean(),
        } | bound_info

    def bound_policy_values(
        self, q_pi: jax.Array, batch: dict[str, jax.Array]
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Q at the policy's proposals ([critics, B, 2N], from pi(.|s) then pi(.|s')) as the
        penalty sees them: unchanged in CQL; Cal-QL floors them (`o2o.agents.calql`)."""
        return q_pi, {}

    def alpha_prime_loss(
        self, params: dict[str, jax.Array], gap: jax.Array
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """-alpha' cql_alpha (gap - g): alpha' grows while the gap exceeds its target g."""
        alpha_prime = jnp.clip(jnp.exp(params["log_alpha_prime"]), 0.0, MAX_ALPHA_PRIME)
        loss = -alpha_prime * self.cql_alpha * (gap - self.config.cql_target_action_gap)
        return loss, {"alpha_prime_loss": loss, "alpha_prime": alpha_prime}

    def update_step(self, batch: dict[str, jax.Array]) -> tuple[CQL, dict[str, jax.Array]]:
        """One joint step on one minibatch: critics (CQL), actor and temperature (SAC's), and
        alpha', all from the pre-step parameters; then the soft target update."""
        stepped, info = self.update_critic(batch)  # SAC's step, with the CQL critic_loss
        moved, actor_info = self.replace(rng=stepped.rng).update_actor(batch)
        agent = moved.replace(
            critic=stepped.critic, target_critic_params=stepped.target_critic_params
        )
        if self.config.cql_lagrange:
            grads, lagrange_info = jax.grad(self.alpha_prime_loss, has_aux=True)(
                self.log_alpha_prime.params, info["cql_gap"]
            )
            agent = agent.replace(log_alpha_prime=self.log_alpha_prime.apply_gradients(grads=grads))
            info |= lagrange_info
        return agent, info | actor_info

    def update(self, batch: dict[str, jax.Array]) -> tuple[CQL, dict[str, jax.Array]]:
        """One joint step per minibatch on the leading axis (scanned); metrics averaged."""
        return scan_update_steps(self, batch)

    def q_values(self, observations: jax.Array, actions: jax.Array) -> jax.Array:
        """Min over the critics: the estimate the actor maximises."""
        return self.critic.apply_fn(self.critic.params, observations, actions).min(0)

    def on_switch(self, config: Any = None) -> CQL:
        """CQL fine-tunes with its offline losses; `cql_alpha_online`, when set, replaces the
        penalty weight (CORL's switch rule). `cql_alpha` is a pytree leaf: no recompilation."""
        online = (config or self.config).cql_alpha_online
        return self if online is None else self.replace(cql_alpha=jnp.float32(online))


register(
    "cql",
    CQL,
    {"locomotion": CQL_LOCOMOTION, "navigation": CQL_ANTMAZE},
    "conservative Q-learning on SAC",
)
