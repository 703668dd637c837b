"""TFDS dataset ``ek100_mqa`` (importing this package registers the builder with TFDS)."""
from data_prep.tfds_ek100_mqa.builder import Ek100Mqa, Ek100MqaConfig

__all__ = ["Ek100Mqa", "Ek100MqaConfig"]
