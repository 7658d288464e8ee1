"""Country profiles: who lives in each synthetic node and how often they are ill.

A profile is data. Its age pyramid (share of the population by five-year band, and the share
of women in each band) is rounded from Eurostat's population on 1 January 2023 (demo_pjangroup)
for France, Finland and Denmark: France is the youngest, Finland the oldest. Prevalences are
the share of persons with at least one record of the condition over the whole data window,
chosen to be plausible and, above all, *different between countries* (more type 2 diabetes
and hypertension in Finland, more COPD and osteoporosis in Denmark, ...), so that a
federation of the three nodes shows real between-site heterogeneity. They are not estimates
of any real population.

The generator reproduces a profile's prevalences and age-sex structure in expectation: the
tests recover them from the generated CDM within binomial tolerances.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from ehds.omop.synth.conditions import CONDITION_KEYS

AGE_BAND_WIDTH = 5
MAX_AGE = 99
# Lower bounds of the 18 bands 0-4, 5-9, ..., 80-84; the last band is 85-99.
AGE_BAND_STARTS: tuple[int, ...] = tuple(range(0, 90, AGE_BAND_WIDTH))


def age_band_label(index: int) -> str:
    start = AGE_BAND_STARTS[index]
    end = MAX_AGE if index == len(AGE_BAND_STARTS) - 1 else start + AGE_BAND_WIDTH - 1
    return f"{start}-{end}"


@dataclass(frozen=True)
class CountryProfile:
    """Demographics and prevalences of one country's synthetic population."""

    code: str
    country: str
    age_band_percent: tuple[float, ...]
    female_share_by_band: tuple[float, ...]
    prevalence: Mapping[str, float]
    mortality_scale: float
    visit_rate_scale: float
    adult_height_cm: tuple[float, float]  # men, women
    bmi_median: float

    def __post_init__(self) -> None:
        bands = len(AGE_BAND_STARTS)
        if len(self.age_band_percent) != bands or len(self.female_share_by_band) != bands:
            raise ValueError(f"profile {self.code}: age bands must have {bands} entries")
        if set(self.prevalence) != set(CONDITION_KEYS):
            raise ValueError(f"profile {self.code}: prevalences must cover {CONDITION_KEYS}")
        if not all(0.0 < p < 1.0 for p in self.prevalence.values()):
            raise ValueError(f"profile {self.code}: prevalences must lie in (0, 1)")

    @property
    def age_band_shares(self) -> tuple[float, ...]:
        """Shares of persons by band, summing to 1."""
        total = sum(self.age_band_percent)
        return tuple(p / total for p in self.age_band_percent)

    @property
    def female_share(self) -> float:
        return sum(
            s * f for s, f in zip(self.age_band_shares, self.female_share_by_band, strict=True)
        )

    @property
    def mean_age(self) -> float:
        """Mean age at the index date, ages uniform within bands."""
        total = 0.0
        for index, share in enumerate(self.age_band_shares):
            start = AGE_BAND_STARTS[index]
            end = MAX_AGE if index == len(AGE_BAND_STARTS) - 1 else start + AGE_BAND_WIDTH - 1
            total += share * (start + end) / 2
        return total


def _prevalence(**values: float) -> Mapping[str, float]:
    return MappingProxyType(values)


# fmt: off
FRANCE = CountryProfile(
    code="fr",
    country="France",
    age_band_percent=(5.3, 5.9, 6.2, 6.1, 5.7, 5.6, 6.0, 6.3, 6.2, 6.4, 6.6, 6.5, 6.1, 5.6, 5.2,
                      3.7, 2.8, 3.3),
    female_share_by_band=(0.488, 0.488, 0.488, 0.488, 0.495, 0.505, 0.510, 0.510, 0.508, 0.508,
                          0.510, 0.515, 0.522, 0.530, 0.540, 0.560, 0.590, 0.670),
    prevalence=_prevalence(
        hypertension=0.17,
        type_2_diabetes=0.055,
        osteoarthritis=0.10,
        gi_hemorrhage=0.008,
        myocardial_infarction=0.012,
        atrial_fibrillation=0.022,
        asthma=0.065,
        copd=0.035,
        osteoporosis=0.040,
        alzheimers_disease=0.012,
        hypothyroidism=0.040,
        sinusitis=0.12,
        streptococcal_sore_throat=0.08,
        otitis_media=0.06,
    ),
    mortality_scale=0.95,
    visit_rate_scale=1.0,
    adult_height_cm=(176.0, 163.0),
    bmi_median=25.0,
)
# fmt: on

# fmt: off
FINLAND = CountryProfile(
    code="fi",
    country="Finland",
    age_band_percent=(4.3, 5.2, 5.7, 5.5, 5.6, 6.2, 6.4, 6.3, 6.0, 5.6, 6.0, 6.3, 6.5, 6.3, 6.6,
                      5.0, 3.2, 3.1),
    female_share_by_band=(0.489, 0.489, 0.489, 0.488, 0.485, 0.480, 0.483, 0.487, 0.490, 0.495,
                          0.500, 0.505, 0.510, 0.520, 0.535, 0.565, 0.600, 0.680),
    prevalence=_prevalence(
        hypertension=0.22,
        type_2_diabetes=0.075,
        osteoarthritis=0.13,
        gi_hemorrhage=0.010,
        myocardial_infarction=0.020,
        atrial_fibrillation=0.035,
        asthma=0.090,
        copd=0.040,
        osteoporosis=0.045,
        alzheimers_disease=0.018,
        hypothyroidism=0.050,
        sinusitis=0.10,
        streptococcal_sore_throat=0.06,
        otitis_media=0.07,
    ),
    mortality_scale=1.0,
    visit_rate_scale=0.9,
    adult_height_cm=(180.0, 166.0),
    bmi_median=26.8,
)
# fmt: on

# fmt: off
DENMARK = CountryProfile(
    code="dk",
    country="Denmark",
    age_band_percent=(4.9, 5.3, 5.7, 5.9, 6.4, 6.6, 6.1, 5.8, 5.8, 6.3, 6.9, 6.7, 6.2, 5.8, 5.7,
                      4.6, 2.9, 2.5),
    female_share_by_band=(0.487, 0.487, 0.487, 0.487, 0.490, 0.495, 0.497, 0.498, 0.500, 0.500,
                          0.500, 0.503, 0.508, 0.515, 0.525, 0.545, 0.575, 0.640),
    prevalence=_prevalence(
        hypertension=0.16,
        type_2_diabetes=0.050,
        osteoarthritis=0.11,
        gi_hemorrhage=0.009,
        myocardial_infarction=0.015,
        atrial_fibrillation=0.030,
        asthma=0.060,
        copd=0.055,
        osteoporosis=0.060,
        alzheimers_disease=0.012,
        hypothyroidism=0.035,
        sinusitis=0.11,
        streptococcal_sore_throat=0.07,
        otitis_media=0.065,
    ),
    mortality_scale=1.05,
    visit_rate_scale=1.1,
    adult_height_cm=(181.0, 167.0),
    bmi_median=25.6,
)
# fmt: on

PROFILES: Mapping[str, CountryProfile] = MappingProxyType(
    {p.code: p for p in (FRANCE, FINLAND, DENMARK)}
)
