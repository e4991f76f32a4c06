from imgcls.errors import UserError


def test_user_error_is_an_exception_with_message():
    err = UserError("data.csv row 3: missing label")
    assert isinstance(err, Exception)
    assert str(err) == "data.csv row 3: missing label"
