"""A loss as terms: one Dice term plus, for a compound loss, one voxel term, each with its options.

Every loss here is ``lambda_<dice> * dice_term + lambda_<voxel> * voxel_term (+ lambda_<map> * map_term)``
on the sums of one fused pass (:mod:`~monai_gdl.losses.sums`):

- Dice terms: :class:`VNetDice` (per-class soft Dice or Jaccard, averaged), :class:`GeneralizedDice`
  (Sudre's one class-weighted ratio) and :class:`Tversky` (false positives and negatives weighed apart,
  focal with ``gamma``);
- voxel terms: :class:`CrossEntropy` (softmax), :class:`BinaryCrossEntropy` (sigmoid) and
  :class:`Focal` (sigmoid or softmax focal), whose per-voxel values the kernels reduce to ``F, Q``;
- structure terms: :class:`SkeletonRecall` and :class:`Boundary`, which read one more per-voxel map
  computed in the data pipeline (a tubed skeleton, signed distances), reduced to ``W, S`` in the same pass.

Each term is a frozen dataclass of its own options (checked when built) with the formula that turns
the sums into its value. :class:`LossOptions` combines the shared :class:`DiceOptions` with the
terms and checks what concerns several of them; :class:`LossKind` is the recipe a public loss is
made from (which terms, which defaults), from which its constructor's signature is derived, so each
option is written once: in its dataclass.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Union, get_args

import torch

from monai_gdl.kernels import DiceStatistics
from monai_gdl.losses.formulas import (
    boundary_from_sums,
    cross_entropy_from_sums,
    focal_from_sums,
    generalized_dice_from_statistics,
    reduce_loss,
    skeleton_recall_from_sums,
    softmax_focal_from_sums,
    tversky_from_statistics,
    vnet_dice_from_statistics,
)
from monai_gdl.losses.options import (
    AbsentClass,
    AllAbsent,
    DiceOptions,
    WType,
    check_choice,
    check_class_weight,
    check_flag,
    check_number,
    class_weight_tensor,
)
from monai_gdl.losses.sums import VoxelTermInputs
from monai_gdl.losses.validation import LossInputError, check_structure_map

__all__ = [
    "BinaryCrossEntropy",
    "Boundary",
    "CrossEntropy",
    "DiceTerm",
    "Focal",
    "GeneralizedDice",
    "LossKind",
    "LossOptions",
    "MapTerm",
    "SkeletonRecall",
    "Tversky",
    "VNetDice",
    "VoxelTerm",
]


def _check_fields(term: Any) -> None:
    """Every field of a term by its declared type: flags, choices, numbers (the lambdas >= 0)."""
    for f in fields(term):
        value = getattr(term, f.name)
        if f.type == "bool":
            object.__setattr__(term, f.name, check_flag(f.name, value))
        elif f.type in _CHOICES:
            check_choice(f.name, value, get_args(_CHOICES[f.type]))
        elif f.type == "float" and f.name.startswith("lambda_"):
            object.__setattr__(term, f.name, check_number(f.name, value, what="a term's weight"))


_CHOICES = {"WType": WType, "AbsentClass": AbsentClass, "AllAbsent": AllAbsent}


class _Term:
    """What every term shares: its fields checked by type when built, and its weight in the sum (the one
    field named ``lambda_*``). ``fixed_options``: shared options (:class:`DiceOptions`) the term's formula
    needs at one value; a loss made of it does not offer them."""

    fixed_options: ClassVar[Mapping[str, Any]] = {}

    def __post_init__(self) -> None:
        _check_fields(self)

    @classmethod
    def lambda_name(cls) -> str:
        return next(f.name for f in fields(cls) if f.name.startswith("lambda_"))  # type: ignore[arg-type]

    @property
    def scale(self) -> float:
        return getattr(self, self.lambda_name())


class _VoxelTerm(_Term):
    """A voxel term: which per-voxel term the fused pass computes (``kernel``), what it needs of the options and
    the input (nothing unless a term says so), and whether its class weights cover every channel."""

    kernel: ClassVar[str]
    weight_per_channel: ClassVar[bool] = False

    def kernel_term(self) -> tuple[str, float]:
        """The fused pass's ``(voxel_term, gamma)``."""
        return self.kernel, 0.0

    def check(self, loss_name: str, dice: DiceOptions) -> None:
        return None

    def check_input(self, loss_name: str, input: torch.Tensor) -> None:
        return None


def apply_class_weight(f: torch.Tensor, weight: torch.Tensor | None, rescale: bool) -> torch.Tensor:
    """``f`` (``N x C``) times the class weights, rescaled to average 1 when ``rescale`` (so ``mean``
    stays a weighted average in [0, 1]); a scalar (``rescale=False`` only) multiplies every class."""
    if weight is None:
        return f
    w = weight.to(device=f.device, dtype=f.dtype)
    if rescale:
        w = w * (w.numel() / w.sum())
    return f * w


@dataclass(frozen=True)
class VNetDice(_Term):
    """V-Net soft Dice (Milletari et al. 2016): ``1 - (2 I + smooth_nr) / (P + G + smooth_dr)`` per class,
    class-weighted, reduced as MONAI's ``DiceLoss``."""

    rescale_weight: bool = True
    jaccard: bool = False
    lambda_dice: float = 1.0

    uses_class_weight: ClassVar[bool] = True

    def loss(self, stats: DiceStatistics, dice: DiceOptions, weight: torch.Tensor | None, spatial_dims: int):
        f = vnet_dice_from_statistics(stats, smooth_nr=dice.smooth_nr, smooth_dr=dice.smooth_dr, jaccard=self.jaccard)
        f = apply_class_weight(f, weight, self.rescale_weight)
        return reduce_loss(f, dice.reduction, spatial_dims=spatial_dims, batch=dice.batch)


@dataclass(frozen=True)
class Tversky(_Term):
    """Tversky loss (Salehi et al. 2017), focal for ``gamma != 1`` (Abraham and Khan 2019): ``(1 - TI)^gamma``
    per class with ``TI = (I + smooth_nr) / (I + alpha FP + beta FN + smooth_dr)``, class-weighted, reduced
    as MONAI's ``TverskyLoss``. FP and FN need the plain (unsquared) sums."""

    alpha: float = 0.5
    beta: float = 0.5
    gamma: float = 1.0
    rescale_weight: bool = True
    lambda_tversky: float = 1.0

    uses_class_weight: ClassVar[bool] = True
    fixed_options: ClassVar[Mapping[str, Any]] = {"squared_pred": False}

    def __post_init__(self) -> None:
        super().__post_init__()
        alpha = check_number("alpha", self.alpha, what="the false-positive weight")
        beta = check_number("beta", self.beta, what="the false-negative weight")
        if alpha == 0 and beta == 0:
            raise LossInputError(
                "alpha=0 and beta=0: the Tversky index would be 1 whatever the prediction (only true positives left);"
                " give false positives (alpha) or false negatives (beta) a weight, e.g. alpha=0.3, beta=0.7 to favour"
                " recall."
            )
        gamma = check_number("gamma", self.gamma, what="the focal Tversky exponent")
        if gamma == 0:
            raise LossInputError(
                "gamma=0: (1 - TI)^0 is 1 whatever the prediction; the focal Tversky exponent must be > 0 (1 is the "
                "plain Tversky loss, 0.75 Abraham and Khan's 1/gamma with their gamma = 4/3)."
            )
        object.__setattr__(self, "alpha", alpha)
        object.__setattr__(self, "beta", beta)
        object.__setattr__(self, "gamma", gamma)

    def loss(self, stats: DiceStatistics, dice: DiceOptions, weight: torch.Tensor | None, spatial_dims: int):
        f = tversky_from_statistics(
            stats,
            alpha=self.alpha,
            beta=self.beta,
            gamma=self.gamma,
            smooth_nr=dice.smooth_nr,
            smooth_dr=dice.smooth_dr,
        )
        f = apply_class_weight(f, weight, self.rescale_weight)
        return reduce_loss(f, dice.reduction, spatial_dims=spatial_dims, batch=dice.batch)


@dataclass(frozen=True)
class GeneralizedDice(_Term):
    """Generalized Dice (Sudre et al. 2017): one ratio over classes weighted by ``w_type`` of their volume."""

    w_type: WType = "square"
    absent_class: AbsentClass = "max"
    all_absent: AllAbsent = "uniform"
    normalize_weights: bool = True
    lambda_gdl: float = 1.0

    uses_class_weight: ClassVar[bool] = False

    def loss(self, stats: DiceStatistics, dice: DiceOptions, weight: torch.Tensor | None, spatial_dims: int):
        f = generalized_dice_from_statistics(
            stats,
            w_type=self.w_type,
            absent_class=self.absent_class,
            all_absent=self.all_absent,
            normalize_weights=self.normalize_weights,
            smooth_nr=dice.smooth_nr,
            smooth_dr=dice.smooth_dr,
        )
        return reduce_loss(f, dice.reduction, spatial_dims=spatial_dims, batch=dice.batch)


def _counted(term: VoxelTermInputs) -> torch.Tensor:
    """The counted voxels per sample, which the sums step computes whenever a voxel term runs."""
    assert term.voxel_count is not None, "volume_sums counts the voxels when a voxel term is asked for"
    return term.voxel_count


def _needs_logits(loss_name: str, dice: DiceOptions) -> None:
    if not (dice.softmax or dice.sigmoid):
        raise LossInputError(
            f"{loss_name} takes logits: pass softmax=True (one class per voxel) or sigmoid=True (multi-label); the "
            "voxel-wise term is defined on logits, not on probabilities."
        )


@dataclass(frozen=True)
class CrossEntropy(_VoxelTerm):
    """PyTorch's ``cross_entropy`` over all C classes (softmax), with class weights and label smoothing."""

    label_smoothing: float = 0.0
    lambda_ce: float = 1.0

    kernel = "softmax"
    #: the class weights cover every channel (not only the scored ones)
    weight_per_channel = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("label_smoothing", self.label_smoothing, below=1.0, what="it")

    def check(self, loss_name: str, dice: DiceOptions) -> None:
        if dice.sigmoid or not dice.softmax:
            raise LossInputError(
                f"{loss_name}: cross-entropy is the softmax loss (one class per voxel), so it needs softmax=True (got "
                f"softmax={dice.softmax}, sigmoid={dice.sigmoid}). For sigmoid / multi-label targets use "
                "VNetDiceBCELoss."
            )

    def check_input(self, loss_name: str, input: torch.Tensor) -> None:
        if input.ndim >= 2 and input.shape[1] == 1:
            raise LossInputError(
                f"{loss_name}: input has 1 channel; cross-entropy over one class is always 0 (MONAI's DiceCELoss "
                "silently switches to BCE there). For one foreground channel use VNetDiceBCELoss (sigmoid), or output "
                "C >= 2 channels."
            )

    def loss(self, term: VoxelTermInputs, dice: DiceOptions, weight: torch.Tensor | None) -> torch.Tensor:
        return cross_entropy_from_sums(
            term.sums,
            term.class_volume,
            _counted(term),
            label_map=dice.to_onehot_y,
            weight=weight,
            label_smoothing=self.label_smoothing,
            reduction=dice.reduction,
        )


@dataclass(frozen=True)
class BinaryCrossEntropy(_VoxelTerm):
    """``binary_cross_entropy_with_logits`` per scored channel (sigmoid), mean over elements."""

    lambda_ce: float = 1.0

    kernel = "sigmoid"

    def check(self, loss_name: str, dice: DiceOptions) -> None:
        if dice.softmax or not dice.sigmoid:
            raise LossInputError(
                f"{loss_name} is the sigmoid (multi-label) compound and needs sigmoid=True (got "
                f"softmax={dice.softmax}, sigmoid={dice.sigmoid}); for one class per voxel with softmax use "
                "VNetDiceCELoss."
            )

    def loss(self, term: VoxelTermInputs, dice: DiceOptions, weight: torch.Tensor | None) -> torch.Tensor:
        return focal_from_sums(
            term.sums.select_classes(dice.include_background), _counted(term), weight=weight, reduction=dice.reduction
        )


@dataclass(frozen=True)
class Focal(_VoxelTerm):
    """MONAI's ``FocalLoss``: sigmoid focal per scored channel, or softmax focal (``use_softmax``)."""

    gamma: float = 2.0
    alpha: float | None = None
    use_softmax: bool = False
    lambda_focal: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "gamma", check_number("gamma", self.gamma, what="the focal exponent (0 gives BCE/CE)"))
        if self.alpha is not None:
            alpha = check_number("alpha", self.alpha, what="the focal balance")
            if alpha > 1.0:
                raise LossInputError(
                    f"alpha={alpha}: the focal balance must lie in [0, 1] (or be None for no balancing)."
                )
            object.__setattr__(self, "alpha", alpha)

    def kernel_term(self) -> tuple[str, float]:
        return ("softmax" if self.use_softmax else "sigmoid"), self.gamma

    def check(self, loss_name: str, dice: DiceOptions) -> None:
        if dice.softmax and dice.sigmoid:
            raise LossInputError(f"{loss_name}: softmax=True and sigmoid=True; choose one.")
        _needs_logits(loss_name, dice)
        if self.use_softmax and not dice.softmax:
            raise LossInputError(
                f"{loss_name}: use_softmax=True (softmax focal) needs softmax=True for the Dice part too."
            )

    def loss(self, term: VoxelTermInputs, dice: DiceOptions, weight: torch.Tensor | None) -> torch.Tensor:
        if self.use_softmax:
            return softmax_focal_from_sums(
                term.sums,
                _counted(term),
                include_background=dice.include_background,
                alpha=self.alpha,
                weight=weight,
                reduction=dice.reduction,
            )
        return focal_from_sums(
            term.sums.select_classes(dice.include_background),
            _counted(term),
            alpha=self.alpha,
            weight=weight,
            reduction=dice.reduction,
        )


class _MapTerm(_Term):
    """A structure term: reads one per-voxel map made in the data pipeline (``argument``: the forward's keyword),
    a label map (``map_labels``) or a dense ``B x C x spatial`` float map, reduced to ``W, S`` in the fused pass.
    The map may also ride in the label-map target as extra channels (what MONAI's trainers can pass)."""

    argument: ClassVar[str]
    map_labels: ClassVar[bool]

    def map_channels(self, num_classes: int) -> int:
        return 1 if self.map_labels else num_classes

    def check(self, loss_name: str, dice: DiceOptions) -> None:
        return None

    def split(
        self, loss_name: str, input: torch.Tensor, target: torch.Tensor, given: torch.Tensor | None, dice: DiceOptions
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(target, map)``: the map as given, or the target's extra channels (label-map targets only),
        checked against the input (values too when ``validate``)."""
        if given is None:
            extra = self.map_channels(input.shape[1]) if input.ndim >= 2 else 0
            packed = (
                dice.to_onehot_y
                and isinstance(target, torch.Tensor)
                and target.ndim == input.ndim
                and target.shape[1] == 1 + extra
            )
            if not packed:
                got = tuple(target.shape) if isinstance(target, torch.Tensor) else type(target).__name__
                raise LossInputError(
                    f"{loss_name} needs its {self.argument} map and got none: pass loss(input, target, "
                    f"{self.argument}=...) or a label-map target with it as {extra} extra channel(s) (label first, "
                    f"B x {1 + extra} x spatial; got target {got}). monai_gdl."
                    f"{'TubedSkeletonMapd' if self.map_labels else 'SignedDistanceMapd'}(..., append=True) makes it."
                )
            target, given = target[:, :1], target[:, 1:]
        check_structure_map(loss_name, self.argument, given, input, labels=self.map_labels, scan=dice.validate)
        return target, given


@dataclass(frozen=True)
class SkeletonRecall(_MapTerm):
    """Skeleton Recall (Kirchhoff et al., ECCV 2024): ``1 - (W_c + smooth_nr) / (S_c + smooth_dr)`` per foreground
    class, ``W_c = sum(p_c s_c)``, ``S_c = sum(s_c)`` on the tubed skeleton ``s`` of the label (a label map made
    by :class:`~monai_gdl.TubedSkeletonMapd`); averaged over samples and classes (pooled first with ``batch``)."""

    lambda_skel: float = 1.0

    argument = "skeleton"
    map_labels = True

    def check(self, loss_name: str, dice: DiceOptions) -> None:
        if not dice.softmax:
            raise LossInputError(
                f"{loss_name}: Skeleton Recall scores the softmax probability of each voxel's skeleton class, so it "
                f"needs softmax=True (got softmax={dice.softmax})."
            )

    def loss(self, term: VoxelTermInputs, dice: DiceOptions) -> torch.Tensor:
        assert term.map_sums is not None, "scored_sums returns the map sums when a map is passed"
        return skeleton_recall_from_sums(
            term.map_sums,
            batch=dice.batch,
            smooth_nr=dice.smooth_nr,
            smooth_dr=dice.smooth_dr,
            reduction=dice.reduction,
        )


@dataclass(frozen=True)
class Boundary(_MapTerm):
    """Boundary loss (Kervadec et al. 2019): the mean of ``p_c * phi_c`` over samples, scored classes and voxels,
    ``phi`` the signed distance map of each class (negative inside, positive outside; a dense ``B x C x spatial``
    map made by :class:`~monai_gdl.SignedDistanceMapd`), reduced as MONAI's ``BoundaryLoss``."""

    lambda_boundary: float = 1.0

    argument = "distance"
    map_labels = False

    def loss(self, term: VoxelTermInputs, dice: DiceOptions) -> torch.Tensor:
        assert term.map_sums is not None, "scored_sums returns the map sums when a map is passed"
        return boundary_from_sums(
            term.map_sums, _counted(term), include_background=dice.include_background, reduction=dice.reduction
        )


DiceTerm = Union[VNetDice, GeneralizedDice, Tversky]
VoxelTerm = Union[CrossEntropy, BinaryCrossEntropy, Focal]
MapTerm = Union[SkeletonRecall, Boundary]


@dataclass(frozen=True)
class LossOptions:
    """Everything a loss computes with: the shared options and its terms, checked together once."""

    name: str
    dice: DiceOptions
    dice_term: DiceTerm
    voxel_term: VoxelTerm | None = None
    map_term: MapTerm | None = None
    #: the terms' weights (``lambda_*``), read once here so the forward needs no field lookups
    dice_scale: float = field(init=False, repr=False, compare=False)
    voxel_scale: float = field(init=False, repr=False, compare=False)
    map_scale: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "dice_scale", self.dice_term.scale)
        object.__setattr__(self, "voxel_scale", 0.0 if self.voxel_term is None else self.voxel_term.scale)
        object.__setattr__(self, "map_scale", 0.0 if self.map_term is None else self.map_term.scale)
        voxel = self.voxel_term
        if voxel is None:
            return
        if self.dice.reduction == "none":
            raise LossInputError(
                "reduction='none': a compound loss returns a scalar ('mean' or 'sum'); per-voxel terms would need a "
                "volume-sized output, which the fused passes never build. For per-class Dice values use "
                "VNetDiceLoss(reduction='none')."
            )
        voxel.check(self.name, self.dice)
        terms = [self.dice_term, voxel] + ([self.map_term] if self.map_term is not None else [])
        if self.map_term is not None:
            self.map_term.check(self.name, self.dice)
        lambdas = {term.lambda_name(): term.scale for term in terms}
        if all(value == 0 for value in lambdas.values()):
            names = " and ".join(f"{name}=0" for name in lambdas)
            raise LossInputError(
                f"{names}: the loss would be 0 whatever the prediction; give at least one term a weight."
            )

    def _parts(self) -> tuple[Any, ...]:
        return (self.dice, self.dice_term) + tuple(t for t in (self.voxel_term, self.map_term) if t is not None)

    def values(self) -> dict[str, Any]:
        """Every option by its argument name."""
        return {f.name: getattr(part, f.name) for part in self._parts() for f in fields(part)}

    def replace(self, **changes: Any) -> LossOptions:
        """A copy with some options changed (by argument name), checked again."""
        parts = []
        for part in self._parts():
            own = {name: value for name, value in changes.items() if name in {f.name for f in fields(part)}}
            parts.append(dataclasses.replace(part, **own) if own else part)
        unknown = set(changes) - {f.name for part in parts for f in fields(part)}
        if unknown:
            raise AttributeError(f"{self.name} has no option {sorted(unknown)}")
        return LossOptions(self.name, *parts)

    def check_weight(self, weight: torch.Tensor | None) -> torch.Tensor | None:
        """The class weights checked against the options (compound losses take one weight per class)."""
        if weight is None:
            return None
        rescale = getattr(self.dice_term, "rescale_weight", False)
        return check_class_weight(weight, rescale_weight=rescale, per_class_only=self.voxel_term is not None)


@dataclass(frozen=True)
class LossKind:
    """The recipe of a public loss: its Dice term, its voxel term (None for a Dice loss alone) and the defaults
    it changes. Its :attr:`signature` lists MONAI-named arguments: the first four positional as in MONAI's
    ``DiceLoss``, the rest keyword-only; ``weight`` (a tensor, not an option) where a term uses class weights."""

    name: str
    dice_term: type[VNetDice] | type[GeneralizedDice] | type[Tversky]
    voxel_term: type[CrossEntropy] | type[BinaryCrossEntropy] | type[Focal] | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    map_term: type[SkeletonRecall] | type[Boundary] | None = None

    POSITIONAL: ClassVar[tuple[str, ...]] = ("include_background", "to_onehot_y", "sigmoid", "softmax")
    ENGINE: ClassVar[tuple[str, ...]] = ("ignore_index", "validate", "implementation", "distributed")

    @property
    def takes_weight(self) -> bool:
        return self.dice_term.uses_class_weight or self.voxel_term is not None

    @functools.cached_property
    def signature(self) -> inspect.Signature:
        """The constructor's parameters, each from the dataclass field that defines it (built once per kind:
        the functional forms bind their arguments to it on every call)."""

        def params(cls: type, skip: tuple[str, ...] = ()) -> list[tuple[str, Any, Any]]:
            return [(f.name, f.type, f.default) for f in fields(cls) if f.name not in skip]

        fixed = tuple(self.dice_term.fixed_options)
        dice = params(DiceOptions, fixed + (("other_act",) if self.voxel_term is not None else ()))
        terms = [t for t in (self.dice_term, self.voxel_term, self.map_term) if t is not None]
        own = [p for cls in terms for p in params(cls) if not p[0].startswith("lambda_")]
        lambdas = [p for cls in terms for p in params(cls) if p[0].startswith("lambda_")] if len(terms) > 1 else []
        weight = [("weight", "Sequence[float] | float | torch.Tensor | None", None)] if self.takes_weight else []
        ordered = (
            [p for p in dice if p[0] not in self.ENGINE]
            + weight
            + own
            + lambdas
            + [p for p in dice if p[0] in self.ENGINE]
        )
        kind = inspect.Parameter
        return inspect.Signature(
            [
                kind(
                    name,
                    kind.POSITIONAL_OR_KEYWORD if name in self.POSITIONAL else kind.KEYWORD_ONLY,
                    default=self.defaults.get(name, default),
                    annotation=annotation,
                )
                for name, annotation, default in ordered
            ]
        )

    def build(self, *args: Any, **kwargs: Any) -> tuple[LossOptions, torch.Tensor | None]:
        """The checked options and class weights from constructor arguments."""
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        values = {**bound.arguments, **self.dice_term.fixed_options}
        weight = class_weight_tensor(values.pop("weight", None))

        def part(cls: type) -> Any:
            return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})

        options = LossOptions(
            self.name,
            part(DiceOptions),
            part(self.dice_term),
            None if self.voxel_term is None else part(self.voxel_term),
            None if self.map_term is None else part(self.map_term),
        )
        return options, options.check_weight(weight)
