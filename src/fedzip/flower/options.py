"""Checks of FedZipStrategy's options that involve the inner strategy or the clients' settings."""

from __future__ import annotations

from typing import Any

from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    Strategy,
)

from ..abc import Compressor
from .wrapper import inner_chain

_CLIENT_SIDE_DP = (DifferentialPrivacyClientSideFixedClipping, DifferentialPrivacyClientSideAdaptiveClipping)


def check_client_dp(inner: Strategy, codec: Compressor, feedback: bool) -> None:
    """Client-side DP clips each update: uploads must stay within its bound."""
    client_dp = next((s for s in inner_chain(inner) if isinstance(s, _CLIENT_SIDE_DP)), None)
    if client_dp is None:
        return
    if feedback:
        raise ValueError(
            f"error feedback adds earlier residuals to the clipped update, so uploads would exceed the "
            f"clipping norm of {type(client_dp).__name__}: pass error_feedback=False, or clip on the "
            "server (DifferentialPrivacyServerSide...) instead"
        )
    if not codec.norm_bounded:
        raise ValueError(
            f"{codec.codec_id!r} can decode to a larger norm than it was given, which breaks the "
            f"clipping bound of {type(client_dp).__name__}; use another compressor or server-side clipping"
        )


def feedback_settings(
    feedback: bool,
    momentum: float,
    masking: bool,
    clip_norm: float | None,
    age_decay: float,
    max_age: int | None,
    step_ahead: float = 0.0,
) -> dict[str, Any]:
    """The error-feedback options sent to the clients (only those that differ from the defaults)."""
    options: dict[str, Any] = {}
    if momentum:
        options |= {"momentum": momentum, "masking": bool(masking)}
    if clip_norm is not None:
        options["clip_norm"] = clip_norm
    if age_decay != 1.0:
        options["age_decay"] = age_decay
    if max_age is not None:
        options["max_age"] = max_age
    if step_ahead:
        options["step_ahead"] = step_ahead
    if options and not feedback:
        raise ValueError(
            "momentum, clip_norm, age_decay, max_age and step_ahead act on the error-feedback residual: "
            "set error_feedback=True"
        )
    return options
