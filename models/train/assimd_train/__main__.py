import sys

if len(sys.argv) > 1 and sys.argv[1] == "qg2l":   # the latent bundle: assimd_train/qg2l.py
    from .qg2l import main as qg2l_main

    qg2l_main(sys.argv[2:])
else:
    from .pipeline import main

    main()
