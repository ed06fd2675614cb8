"""`python -m auditor ...` is `audit ...`: the form torchrun starts (`torchrun --nproc-per-node N -m auditor run`)."""

from cli import main

if __name__ == "__main__":
    main()
