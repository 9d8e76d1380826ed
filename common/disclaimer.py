"""The research-use notice printed with every user-facing prediction."""

DISCLAIMER = (
    "Research use only: these models are not medical devices, have not been "
    "clinically validated and must not be used for diagnosis, triage or any "
    "clinical decision. Seek advice from a qualified health professional."
)
