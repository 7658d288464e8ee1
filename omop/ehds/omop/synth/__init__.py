"""Synthetic OMOP CDM v5.4 for a country profile: ``generate(db, SynthOptions(...))``.

Modules, in the order data flows: :mod:`.profiles` (countries, as data) and
:mod:`.conditions` / :mod:`.concepts` (the clinical catalogue); :mod:`.persons`,
:mod:`.periods`, :mod:`.visits`, :mod:`.clinical_events`, :mod:`.measurements` (vectorised
draws for a chunk of persons); :mod:`.chunk` (a chunk as Arrow tables with ids);
:mod:`.generator` (chunks streamed into one transaction); :mod:`.vocabulary_subset` (the
concepts and hierarchy shipped with the data); :mod:`.report`.
"""

from ehds.omop.synth.generator import generate
from ehds.omop.synth.options import SynthConfigError, SynthOptions
from ehds.omop.synth.report import SynthReport

__all__ = ["SynthConfigError", "SynthOptions", "SynthReport", "generate"]
