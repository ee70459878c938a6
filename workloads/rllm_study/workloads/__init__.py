"""What a study sends and when: data sets, prompts, answer grading, arrival processes."""
