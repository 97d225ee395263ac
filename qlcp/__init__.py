"""QLCP, the Quick Light Curve Pipeline: the one import name of the installed distribution.

The repository keeps the product's layers as top-level folders; the wheel maps
them under this package (``package-dir`` in ``pyproject.toml``), so nothing
generic lands in ``site-packages``:

=====================  ===============  ============================================
import name            folder           what
=====================  ===============  ============================================
``qlcp.core``          ``qlcp_core/``   the science, plain functions (no Prefect)
``qlcp.tasks``         ``tasks/``       Prefect tasks wrapping the core's stages
``qlcp.flows``         ``flows/``       Prefect flows composing the tasks
``qlcp.deployments``   ``deployments/`` sensor, serving and the ``qlcp`` command
=====================  ===============  ============================================
"""
