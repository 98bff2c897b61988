"""assimd_train: training pipeline for assimd score-model bundles (DESIGN §5-§6).

Data come from the Rust binary (`assimd experiment --record`), the single source of truth for the
dynamics and the filters. Testbeds are registered in `testbeds.py`; l96 is built, qg2l slots in later.
"""
