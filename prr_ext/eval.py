"""`python -m prr_ext.eval --model PATH --data FILE.jsonl ...` evaluates commit rules on your own model and prompts
(prr_ext.user_eval); without --model and --data it runs the testbed's policy sweep, `python -m prr_testbed.sweep`
(same arguments), as before."""

if __name__ == "__main__":
    from prr_ext.user_eval import main

    main()
