"""Propositional-logic reasoning data: generator, renderings, parser, independent solver."""
from modules.studies.logic.data.dataset import (COLUMNS, SCHEMA, TRACE_COLUMNS, few_shot_prompts, generate_flip_pairs,
                                        generate_splits, generate_traces, problem_row, read_split, read_traces,
                                        read_training_rows, renderings, splits_from_params, training_files,
                                        write_splits, write_traces)
from modules.studies.logic.data.labels import conclusion_sources
from modules.studies.logic.data.generator import MAX_DEPTH, MIN_DEPTH, Problem, check_params, sample_problem
from modules.studies.logic.data.solver import (answers_agree, backward_trace, check_answer, solve, solve_compact,
                                       solve_natural, trace_compact)
from modules.studies.logic.data.syntax import (PROMPT_ENDS, VOCAB, Rule, Statement, compact_answer, compact_prompt,
                                       end_compact_prompt, few_shot_prompt, natural_answer, natural_prompt,
                                       parse_answer, parse_compact_answer, parse_compact_prompt,
                                       parse_natural_answer, parse_natural_prompt, parse_prompt)
