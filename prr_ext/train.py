"""`python -m prr_ext.train` runs the testbed's controller training, `python -m prr_testbed.train_controller`
(same arguments)."""

if __name__ == "__main__":
    from prr_testbed.train_controller import main

    main()
