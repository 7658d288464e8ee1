"""The clinical catalogue: the conditions the generator knows, with their treatments.

Each condition names the concept a study would use ("``root_concept_id`` and descendants") and
the codes actually written, which are often *descendants* of the root in the real SNOMED
hierarchy shipped with the vocabulary subset (childhood asthma under asthma, viral sinusitis
under sinusitis, pulmonary emphysema under COPD): descendant expansion through
``concept_ancestor`` is then needed to find every case, as with real data.

How often a condition occurs is *not* here: prevalences belong to the country profiles
(:mod:`ehds.omop.synth.profiles`). Here is only how risk is shaped within a population: by
age (a logistic curve), by sex (a relative risk for women) and by comorbidity (relative risks
given earlier conditions in catalogue order, e.g. GI bleeding given osteoarthritis, through
the NSAIDs that osteoarthritis patients take).

Drugs are prescribed at the visits where the condition is recorded (NSAIDs for
osteoarthritis, metformin for type 2 diabetes); procedures likewise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class Choice:
    """A concept drawn with a relative weight among its siblings."""

    concept_id: int
    weight: float = 1.0


@dataclass(frozen=True)
class ProcedureRule:
    """A procedure done at a visit recording the condition, with this probability."""

    concept_id: int
    probability: float


@dataclass(frozen=True)
class AgeCurve:
    """Relative risk by age: ``floor + logistic((age - midpoint) / scale)``.

    A negative ``scale`` makes risk fall with age (childhood conditions).
    """

    midpoint: float
    scale: float
    floor: float

    def weight(self, age: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        result: npt.NDArray[np.float64] = self.floor + 1.0 / (
            1.0 + np.exp(-(age - self.midpoint) / self.scale)
        )
        return result


@dataclass(frozen=True)
class ConditionSpec:
    key: str
    root_concept_id: int
    codes: tuple[Choice, ...]
    chronic: bool
    age_curve: AgeCurve
    female_rr: float = 1.0
    comorbidity_rr: tuple[tuple[str, float], ...] = ()
    child_code: int | None = None
    extra_occurrences: float = 0.0
    drugs: tuple[Choice, ...] = ()
    drug_probability: float = 0.0
    days_supply: int = 30
    procedures: tuple[ProcedureRule, ...] = ()
    mortality_rr: float = 1.0

    def concept_ids(self) -> set[int]:
        ids = {self.root_concept_id, *(c.concept_id for c in self.codes)}
        ids.update(d.concept_id for d in self.drugs)
        ids.update(p.concept_id for p in self.procedures)
        if self.child_code is not None:
            ids.add(self.child_code)
        return ids


ECG = 4163951
AMOXICILLIN_500 = 19073188
ALBUTEROL_INHALER = 1154615

CONDITIONS: tuple[ConditionSpec, ...] = (
    ConditionSpec(
        key="hypertension",
        root_concept_id=320128,  # Essential hypertension
        codes=(Choice(320128),),
        chronic=True,
        age_curve=AgeCurve(55, 9, 0.003),
        female_rr=0.9,
        extra_occurrences=4.0,
        drugs=(Choice(1332419, 3), Choice(19080128, 2), Choice(19078106, 1)),
        drug_probability=0.8,
        days_supply=90,
        procedures=(ProcedureRule(ECG, 0.1),),
        mortality_rr=1.1,
    ),
    ConditionSpec(
        key="type_2_diabetes",
        root_concept_id=201826,  # Type 2 diabetes mellitus
        codes=(Choice(201826),),
        chronic=True,
        age_curve=AgeCurve(60, 10, 0.002),
        female_rr=0.75,
        comorbidity_rr=(("hypertension", 2.0),),
        extra_occurrences=4.0,
        drugs=(Choice(40163924),),  # metformin 500 MG extended release
        drug_probability=0.8,
        days_supply=90,
        mortality_rr=1.4,
    ),
    ConditionSpec(
        key="osteoarthritis",
        root_concept_id=80180,
        codes=(Choice(80180),),
        chronic=True,
        age_curve=AgeCurve(62, 9, 0.001),
        female_rr=1.4,
        extra_occurrences=3.0,
        # NSAIDs (celecoxib, naproxen, ibuprofen, diclofenac), then acetaminophen
        drugs=(
            Choice(1118084, 2),
            Choice(1115171, 2),
            Choice(19078461, 3),
            Choice(1124300, 1),
            Choice(1127433, 2),
        ),
        drug_probability=0.7,
        days_supply=30,
        procedures=(ProcedureRule(4252419, 0.3),),  # radiologic examination of knee
    ),
    ConditionSpec(
        key="gi_hemorrhage",
        root_concept_id=192671,  # Gastrointestinal hemorrhage
        codes=(Choice(192671),),
        chronic=False,
        age_curve=AgeCurve(65, 12, 0.02),
        female_rr=0.8,
        comorbidity_rr=(("osteoarthritis", 2.5),),
        extra_occurrences=0.3,
        procedures=(ProcedureRule(4108705, 0.25),),  # transfusion of packed cells
        mortality_rr=1.5,
    ),
    ConditionSpec(
        key="myocardial_infarction",
        root_concept_id=4329847,
        codes=(Choice(4329847),),
        chronic=True,
        age_curve=AgeCurve(68, 9, 0.0005),
        female_rr=0.5,
        comorbidity_rr=(("hypertension", 1.8), ("type_2_diabetes", 1.8)),
        extra_occurrences=2.0,
        # clopidogrel, aspirin 81 MG, atorvastatin 80 MG, nitroglycerin spray
        drugs=(Choice(19075601, 2), Choice(19059056, 3), Choice(1545959, 3), Choice(19126352)),
        drug_probability=0.9,
        days_supply=90,
        procedures=(
            ProcedureRule(4216130, 0.4),  # percutaneous coronary intervention
            ProcedureRule(4336464, 0.08),  # coronary artery bypass graft
            ProcedureRule(ECG, 0.5),
        ),
        mortality_rr=2.0,
    ),
    ConditionSpec(
        key="atrial_fibrillation",
        root_concept_id=313217,
        codes=(Choice(313217),),
        chronic=True,
        age_curve=AgeCurve(72, 8, 0.0005),
        female_rr=0.8,
        comorbidity_rr=(("hypertension", 1.7),),
        extra_occurrences=3.0,
        drugs=(Choice(40163554, 3), Choice(19018935, 1), Choice(40171902, 1)),
        drug_probability=0.8,
        days_supply=90,
        procedures=(ProcedureRule(ECG, 0.3), ProcedureRule(4078793, 0.1)),  # + cardioversion
        mortality_rr=1.3,
    ),
    ConditionSpec(
        key="asthma",
        root_concept_id=317009,
        codes=(Choice(317009),),
        child_code=4051466,  # Childhood asthma, for persons under 18
        chronic=True,
        age_curve=AgeCurve(15, -8, 0.5),
        female_rr=1.1,
        extra_occurrences=3.0,
        drugs=(Choice(ALBUTEROL_INHALER, 2), Choice(40169216, 1)),
        drug_probability=0.7,
        days_supply=30,
        procedures=(ProcedureRule(4062501, 0.2),),  # asthma screening
    ),
    ConditionSpec(
        key="copd",
        root_concept_id=255573,  # Chronic obstructive lung disease
        codes=(Choice(255573, 7), Choice(261325, 3)),  # + Pulmonary emphysema
        chronic=True,
        age_curve=AgeCurve(65, 8, 0.001),
        female_rr=0.85,
        extra_occurrences=3.0,
        drugs=(Choice(40169281, 2), Choice(ALBUTEROL_INHALER, 1)),
        drug_probability=0.7,
        days_supply=30,
        procedures=(ProcedureRule(4035793, 0.15), ProcedureRule(4163872, 0.2)),
        mortality_rr=1.8,
    ),
    ConditionSpec(
        key="osteoporosis",
        root_concept_id=80502,
        codes=(Choice(80502, 85), Choice(40480160, 15)),  # + pathological fracture
        chronic=True,
        age_curve=AgeCurve(68, 7, 0.0005),
        female_rr=4.0,
        extra_occurrences=2.5,
        drugs=(Choice(40173590),),  # alendronic acid
        drug_probability=0.6,
        days_supply=90,
        procedures=(ProcedureRule(4195803, 0.4),),  # bone density scan
    ),
    ConditionSpec(
        key="alzheimers_disease",
        root_concept_id=378419,
        codes=(Choice(378419, 97), Choice(4043241, 3)),  # + familial early onset
        chronic=True,
        age_curve=AgeCurve(82, 5, 0.0002),
        female_rr=1.6,
        extra_occurrences=2.5,
        drugs=(Choice(40223768, 3), Choice(19077572, 1), Choice(40222846, 1)),
        drug_probability=0.6,
        days_supply=90,
        mortality_rr=2.5,
    ),
    ConditionSpec(
        key="hypothyroidism",
        root_concept_id=140673,
        codes=(Choice(140673),),
        chronic=True,
        age_curve=AgeCurve(50, 12, 0.05),
        female_rr=4.0,
        extra_occurrences=2.5,
        drugs=(Choice(40174880),),  # levothyroxine
        drug_probability=0.9,
        days_supply=90,
    ),
    ConditionSpec(
        key="sinusitis",
        root_concept_id=4283893,  # Sinusitis: never written itself, only its children
        codes=(Choice(40481087, 60), Choice(257012, 25), Choice(4294548, 15)),
        chronic=False,
        age_curve=AgeCurve(30, 20, 0.3),
        female_rr=1.3,
        extra_occurrences=0.5,
        drugs=(Choice(AMOXICILLIN_500, 2), Choice(1713671, 1)),
        drug_probability=0.5,
        days_supply=10,
        procedures=(ProcedureRule(4010253, 0.03),),  # nasal sinus endoscopy
    ),
    ConditionSpec(
        key="streptococcal_sore_throat",
        root_concept_id=28060,
        codes=(Choice(28060),),
        chronic=False,
        age_curve=AgeCurve(12, -5, 0.15),
        extra_occurrences=0.3,
        drugs=(Choice(19133905, 1), Choice(19133873, 1)),  # penicillin V
        drug_probability=0.8,
        days_supply=10,
    ),
    ConditionSpec(
        key="otitis_media",
        root_concept_id=372328,
        codes=(Choice(372328),),
        chronic=False,
        age_curve=AgeCurve(6, -2, 0.02),
        female_rr=0.95,
        extra_occurrences=0.6,
        drugs=(Choice(19073183),),  # amoxicillin 250 MG capsule
        drug_probability=0.6,
        days_supply=7,
    ),
)

CONDITION_KEYS: tuple[str, ...] = tuple(c.key for c in CONDITIONS)


def catalogue_concept_ids() -> frozenset[int]:
    """Every concept a condition may write, plus the cohort roots."""
    ids: set[int] = set()
    for condition in CONDITIONS:
        ids |= condition.concept_ids()
    return frozenset(ids)
