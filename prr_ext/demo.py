"""`python -m prr_ext.demo` runs the testbed's demo, `python -m prr_testbed.demo` (same arguments)."""

if __name__ == "__main__":
    from prr_testbed.demo import main

    main()
