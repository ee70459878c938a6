from rllm_study.cli import main

if __name__ == "__main__":  # not when a spawned child (the grading process) imports it
    main()
