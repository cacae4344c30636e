"""`python -m prr_ext.eval` runs the testbed's policy sweep, `python -m prr_testbed.sweep` (same arguments)."""

if __name__ == "__main__":
    from prr_testbed.sweep import main

    main()
