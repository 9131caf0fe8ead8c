"""faml_jax.logs: the library logs, the programs show its messages as plain lines."""

import logging

from faml_jax import logs


def test_show_puts_information_on_stdout_and_warnings_on_stderr_once_each(capsys):
    logger = logging.getLogger("faml_jax.some_module")
    logs.show()
    logs.show()  # again: replaces the earlier setting, does not repeat the lines
    logger.info("epoch 1/2: test acc 0.5")
    logger.warning("checkpoint 3 is damaged")
    logging.getLogger("experiments.predict").info("2 face(s)")
    out, err = capsys.readouterr()
    assert out == "epoch 1/2: test acc 0.5\n2 face(s)\n"
    assert err == "checkpoint 3 is damaged\n"
    logs.show(logging.WARNING)  # a process other than the first of a multi-process run
    logger.info("not shown")
    logger.warning("shown")
    out, err = capsys.readouterr()
    assert (out, err) == ("", "shown\n")
    logs.show()


def test_the_library_prints_nothing_unless_asked(capsys):
    """Without ``show`` (a Python user who did not configure logging), information is silent."""
    logger = logging.getLogger("faml_jax")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    for handler in handlers:
        logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)
    logger.propagate = True
    try:
        logging.getLogger("faml_jax.trainer").info("final (epoch 2): test accuracy 0.5")
        assert capsys.readouterr().out == ""
    finally:
        for handler in handlers:
            logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
