"""What an explanation is for (the guess, a country or a fine cell), and how much posterior mass it holds.

Occlusion measures a target by the posterior's raw mass on it: within OCCLUSION_KM of its point (the
guess, a cell), or inside its country, read with the posterior's own functions (`mixture`,
`mass_within`).

A country is not only the fine places whose representative point lies in it: a place near a border
holds photos of several countries (the bundled model's Prague cell holds the three Polish photos, and
no place's point is in Poland). So a country's places are weighted by the share of their training
photos taken in it (`country_weights`): P(country) = sum over places of P(place) x that share.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from geopin.locate.posterior import mass_within, mixture

#: The radius whose posterior mass occlusion measures for point targets (the guess, a cell).
OCCLUSION_KM = 750.0
_TOKEN_RE = re.compile(r"^[0-9a-f]{1,16}$")


@dataclass(frozen=True)
class Target:
    """What an explanation is for; `mask` marks the model's fine places that belong to it."""

    kind: str  # "guess" | "country" | "cell"
    value: str  # the guess's cell token, the ISO2 code, or the cell token
    lat: float
    lon: float
    mask: np.ndarray = field(repr=False)  # (K,) bool over the model's fine places
    weight: np.ndarray | None = field(default=None, repr=False)  # (K,) share of each place in the target; None: the mask

    @property
    def weights(self) -> np.ndarray:
        """(K,) float: how much of each fine place belongs to the target (the mask as 0/1 when no weights)."""
        return self.mask.astype(np.float64) if self.weight is None else self.weight

    def to_dict(self) -> dict:
        return {"kind": self.kind, "value": self.value, "lat": self.lat, "lon": self.lon, "n_places": int(self.mask.sum())}


def fine_places(model) -> dict[str, np.ndarray]:
    """The model's fine places (its `fine_cells`, in class order) as arrays: lat, lon, token, country."""
    f = model.fine_cells
    return {
        "lat": f.lat.to_numpy(dtype=float),
        "lon": f.lon.to_numpy(dtype=float),
        "token": f.token.to_numpy(dtype=str),
        "country": f.country.to_numpy(dtype=str),
    }


def country_weights(model, cc: str) -> np.ndarray:
    """(K,) share of each fine place's training photos taken in country `cc` (ISO2): the model's own
    `place_country_shares`, which predict's country masses read too."""
    codes, shares = model.place_country_shares
    at = np.flatnonzero(codes == cc)
    return shares[:, at[0]].copy() if len(at) else np.zeros(shares.shape[0])


def countries_with_places(model) -> set[str]:
    """The countries some fine place of the model holds training photos of (or has its representative point in)."""
    codes, shares = model.place_country_shares
    return {str(c) for c, held in zip(codes, shares.sum(axis=0) > 0) if c and held}


def resolve_target(model, target: str, guess: tuple[float, float], cell_mass: np.ndarray | None = None) -> Target:
    """Turn "guess", an ISO2 country code or a fine cell token into the fine places it stands for.

    Anything else is a ValueError naming the target and what would have been accepted.
    """
    from geopin.geo import pairwise_km

    fine = fine_places(model)
    if not isinstance(target, str) or not target.strip():
        raise ValueError(f"target {target!r}: expected 'guess', a 2-letter country code (e.g. FR) or a fine cell token")
    text = target.strip()
    if text.lower() == "guess":
        d = pairwise_km(np.array([guess[0]]), np.array([guess[1]]), fine["lat"], fine["lon"])[0]
        j = int(np.argmin(d))
        mask = np.zeros(len(d), dtype=bool)
        mask[j] = True
        token = model.cell_token_of(guess[0], guess[1]) or str(fine["token"][j])
        return Target("guess", token, float(guess[0]), float(guess[1]), mask)
    if len(text) == 2 and text.isalpha():
        cc = text.upper()
        weight = country_weights(model, cc)
        mask = weight > 0
        if not mask.any():
            known = sorted(countries_with_places(model))
            raise ValueError(
                f"target {target!r}: the model has no place in country {cc} "
                f"(it knows {len(known)} countries: {', '.join(known[:40])}{' ...' if len(known) > 40 else ''})"
            )
        idx = np.flatnonzero(mask)
        # where the country is represented: its most probable place for this photo, else its first
        j = int(idx[np.argmax(cell_mass[idx] * weight[idx])]) if cell_mass is not None else int(idx[np.argmax(weight[idx])])
        return Target("country", cc, float(fine["lat"][j]), float(fine["lon"][j]), mask, weight)
    token = text.lower()
    if _TOKEN_RE.match(token):
        mask = fine["token"] == token
        if mask.any():
            j = int(np.flatnonzero(mask)[0])
            return Target("cell", token, float(fine["lat"][j]), float(fine["lon"][j]), mask)
        raise ValueError(
            f"target {target!r}: no fine cell of this model has that S2 token "
            f"({len(fine['token'])} fine cells, e.g. {', '.join(map(str, fine['token'][:3]))})"
        )
    raise ValueError(f"target {target!r}: not 'guess', a 2-letter country code (e.g. FR) or an S2 cell token (hex)")


def posterior(model, emb: np.ndarray):
    """(evidence, mass on the fine places (B, K), mass on the neighbours (B, k)): the model's own mixture."""
    ev = model.heads.evidence(emb)
    cell, nb = mixture(model.heads.places, ev, model.params)
    return ev, cell, nb


def target_mass(model, target: Target, ev, cell: np.ndarray, nb: np.ndarray) -> np.ndarray:
    """Posterior mass (raw, uncalibrated) on the target: within OCCLUSION_KM of its point, or inside its country."""
    if target.kind == "country":
        nb_cc = ev.nb_country if ev.nb_country is not None else np.full(ev.nb_lat.shape, "")
        return cell @ target.weights + (nb * (nb_cc == target.value)).sum(1)
    return mass_within(model.heads.places, ev, cell, nb, target.lat, target.lon, (OCCLUSION_KM,))[:, 0]


__all__ = ["OCCLUSION_KM", "Target", "resolve_target", "fine_places", "country_weights", "countries_with_places", "posterior",
           "target_mass"]
