"""`python -m prr_ext.train --model PATH --data train.jsonl --val val.jsonl --out DIR ...` trains a PRR controller
for your own model (prr_ext.user_train); without --model and --data it runs the testbed's controller training,
`python -m prr_testbed.train_controller` (same arguments), as before."""

if __name__ == "__main__":
    from prr_ext.user_train import main

    main()
