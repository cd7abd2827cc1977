"""The data sets a local swarm or a comparison can run on, with the knobs each one has.

A :class:`DatasetSpec` is small and picklable, so node launchers and worker processes can
rebuild exactly the same shards from it and a seed.
"""

from __future__ import annotations

from dataclasses import dataclass

from apiary.core.data.shards import Shard
from apiary.core.errors import InvalidInput

__all__ = ["DATASET_NAMES", "HEART_SPLITS", "DatasetSpec"]

DATASET_NAMES: tuple[str, ...] = ("heart", "fashion", "letters")
#: How the heart hospitals are split and encoded: ``apiary`` (stratified 2/3 per hospital,
#: drawn per seed; 15 features, 5 standardised) or ``flamby`` (FLamby's Fed-Heart-Disease
#: exactly: fixed split, 13 features all standardised; :mod:`apiary.core.data.flamby_heart`).
HEART_SPLITS: tuple[str, ...] = ("apiary", "flamby")


@dataclass(frozen=True)
class DatasetSpec:
    """``heart``: the four UCI Heart Disease hospitals (natural split, MLP), train/test split
    per ``split`` (:data:`HEART_SPLITS`).
    ``fashion``: Fashion-MNIST over ``hospitals`` sites with Dirichlet(``alpha``) label skew,
    ``images`` images in all (small CNN).
    ``letters``: UCI Letter Recognition (26 classes) over ``hospitals`` sites with
    Dirichlet(``alpha``) label skew, all 20,000 letters (wide MLP, 111,770 parameters)."""

    name: str = "heart"
    alpha: float = 0.5
    images: int = 12_500
    hospitals: int = 5
    split: str = "apiary"

    def __post_init__(self) -> None:
        if self.name not in DATASET_NAMES:
            raise InvalidInput(f"unknown dataset {self.name!r}; known: {', '.join(DATASET_NAMES)}")
        if self.split not in HEART_SPLITS:
            raise InvalidInput(f"unknown split {self.split!r}; known: {', '.join(HEART_SPLITS)}")
        if self.split != "apiary" and self.name != "heart":
            raise InvalidInput(f"--split {self.split} is a split of the heart data set; "
                               f"{self.name} has its own (leave --split at apiary)")

    @property
    def label(self) -> str:
        """A name for this data set and split, for file names: ``heart``, ``heart-flamby``."""
        return self.name if self.split == "apiary" else f"{self.name}-{self.split}"

    @property
    def hospital_names(self) -> tuple[str, ...]:
        if self.name == "heart":
            from apiary.core.data.heart import HOSPITALS

            return HOSPITALS
        from apiary.core.data.fashion import fashion_hospitals

        return fashion_hospitals(self.hospitals)

    @property
    def model(self) -> str:
        """The registry model that fits the data."""
        return {"heart": "mlp", "fashion": "cnn", "letters": "mlp-wide"}[self.name]

    def load(self, seed: int) -> dict[str, Shard]:
        """Every hospital's shard, in :attr:`hospital_names` order; deterministic in ``seed``."""
        if self.name == "heart" and self.split == "flamby":
            from apiary.core.data.flamby_heart import load_flamby_heart_shards

            return load_flamby_heart_shards()
        if self.name == "heart":
            from apiary.core.data.heart import load_heart_shards

            return load_heart_shards(seed=seed)
        if self.name == "letters":
            from apiary.core.data.letters import load_letters_shards

            return load_letters_shards(seed=seed, alpha=self.alpha, hospitals=self.hospitals)
        from apiary.core.data.fashion import load_fashion_shards

        return load_fashion_shards(seed=seed, alpha=self.alpha, images=self.images,
                                   hospitals=self.hospitals)

    def describe(self) -> dict[str, object]:
        if self.name == "heart":
            return {"name": "heart", "split": self.split, "hospitals": list(self.hospital_names)}
        if self.name == "letters":
            return {"name": "letters", "hospitals": list(self.hospital_names),
                    "alpha": self.alpha}
        return {"name": "fashion", "hospitals": list(self.hospital_names), "alpha": self.alpha,
                "images": self.images}
