from rllm_study.cli import main

main()
