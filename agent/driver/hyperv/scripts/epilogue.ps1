} catch {
    $e = $_
    Out-FerryResult @{ error = @{
            category = $e.CategoryInfo.Category.ToString()
            id       = $e.FullyQualifiedErrorId
            hresult  = $e.Exception.HResult
            type     = $e.Exception.GetType().FullName
            message  = $e.Exception.Message
        } }
    exit 1
}
