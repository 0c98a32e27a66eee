"""The project's tests, a regular package: verl and OpenRLHF wheels install a top-level ``tests`` package of their own
into site-packages, which would otherwise shadow this folder (``from tests._toy import ...``)."""
